"""Long runs through MCP, with the official MCP Python SDK (PyPI `mcp`) against
dynapi's /mcp. Used by tests/it/mcp.rs, which checks what this prints.

    python3 progress.py URL TOKEN MODE
        MODE: legacy (initialize; logging/setLevel) or 2026-07-28 (stateless;
        the log level sent with each request)

Prints one JSON object per line:
  {"step": "ticked", "progress", "logs", "result"}  the `ticker` endpoint (a
        line a second for 10 s on stdout, and on stderr) called with a
        progress callback and logging at info: every progress notification
        (progress, total, message) and log message (level, logger, data)
  {"step": "cancelled", "pids", "result"}  the `forever` endpoint called, then
        cancelled once its progress named its process ids
  {"step": "jobbed", "result", "job"}  the `sleepy` endpoint, which outlives
        --job-after, called without a progress token, then getJob of its job
  {"step": "structured", "schema", "weather", "broken"}  the outputSchema the
        `weather` tool lists, and the results of `weather` and `broken` (both
        `output: json` with an output_schema; broken's output lacks a field)
Errors end it with a non-zero exit and the reason on stderr.
"""

import asyncio
import re
import sys

from connection import connect, say


def result(r):
    return {"is_error": bool(r.is_error), "structured": r.structured_content}


async def main(url, token, mode):
    logs = []

    async def on_log(params):
        logs.append({"level": params.level, "logger": params.logger, "data": params.data})

    level = "info" if mode != "legacy" else None
    async with connect(url, token, mode, logging_callback=on_log, log_level=level) as client:
        if mode == "legacy":
            await client.set_logging_level("info")

        progress = []

        async def on_progress(done, total, message):
            progress.append({"progress": done, "total": total, "message": message})

        ticked = await client.call_tool("ticker", {}, progress_callback=on_progress)
        say(step="ticked", progress=progress, logs=logs, result=result(ticked))

        pids = asyncio.Queue()

        async def on_forever(done, total, message):
            found = re.findall(r"pid (\d+)", message or "")
            if len(found) >= 2:
                pids.put_nowait([int(p) for p in found])

        call = asyncio.create_task(client.call_tool("forever", {}, progress_callback=on_forever))
        named = await asyncio.wait_for(pids.get(), 15)
        call.cancel()
        try:
            outcome = result(await call)
        except asyncio.CancelledError:
            outcome = "cancelled"
        say(step="cancelled", pids=named, result=outcome)

        jobbed = result(await client.call_tool("sleepy", {}))
        job_id = (jobbed["structured"] or {}).get("job_id")
        job = result(await client.call_tool("getJob", {"id": job_id})) if job_id else None
        say(step="jobbed", result=jobbed, job=job)

        tools = {t.name: t for t in (await client.list_tools()).tools}
        texts = lambda r: [c.text for c in r.content if getattr(c, "text", None) is not None]
        weather = await client.call_tool("weather", {})
        broken = await client.call_tool("broken", {})
        say(
            step="structured",
            schema=tools["weather"].output_schema,
            weather=result(weather),
            broken={**result(broken), "text": texts(broken)},
        )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
