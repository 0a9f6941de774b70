/* The floor under any dispatcher: a program that only starts a script and
 * reads its output, as fast as it can, from CONNECTIONS threads at once.
 * posix_spawn (glibc's clone(CLONE_VM | CLONE_VFORK)), stdout to a pipe read
 * to its end, waitpid; no HTTP, no sandbox. bench/dispatch.sh compiles it with
 * cc and runs it beside dynapi and webhook, so that their rates can be read
 * against what the machine can do at all.
 *
 *   spawn_floor SCRIPT THREADS SECONDS   -> prints runs per second */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static atomic_long runs;
static double seconds;
static const char *script;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void *worker(void *unused) {
  (void)unused;
  double end = now() + seconds;
  char buf[4096];
  char *argv[] = {(char *)script, NULL};
  char *envp[] = {"PATH=/usr/local/bin:/usr/bin:/bin", NULL};
  while (now() < end) {
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) { perror("pipe2"); exit(1); }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    pid_t pid;
    if (posix_spawn(&pid, script, &actions, NULL, argv, envp) != 0) { perror("posix_spawn"); exit(1); }
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    while (read(out[0], buf, sizeof buf) > 0) {}
    close(out[0]);
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fprintf(stderr, "the script failed\n"); exit(1); }
    atomic_fetch_add(&runs, 1);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 4) { fprintf(stderr, "usage: spawn_floor SCRIPT THREADS SECONDS\n"); return 2; }
  script = argv[1];
  int threads = atoi(argv[2]);
  seconds = atof(argv[3]);
  if (threads < 1 || threads > 256 || seconds <= 0) { fprintf(stderr, "bad arguments\n"); return 2; }
  pthread_t t[256];
  for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, NULL);
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  printf("%.2f\n", runs / seconds);
  return 0;
}
