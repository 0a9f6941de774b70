//! The `dynapi` binary: parses the command line, starts logging, and hands over to
//! the library. Nothing else lives here.

use clap::Parser;
use tokio_util::sync::CancellationToken;

use dynapi::config::{
    Cli, Command, Config, LogFormat, OauthClientCommand, OauthCommand, TokenCommand,
};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check {
            dir,
            format,
            offline,
        } => dynapi::commands::check(&dir, format, offline),
        Command::Init { dir, library } => dynapi::commands::init(&dir, library),
        Command::Openapi {
            profile,
            public_url,
            dir,
        } => dynapi::commands::openapi(&dir, &profile, &public_url),
        Command::Token(TokenCommand::New { scopes, name }) => {
            dynapi::commands::token_new(&scopes, &name)
        }
        Command::Oauth(OauthCommand::Client(OauthClientCommand::New {
            name,
            redirect_uris,
            scopes,
            public_url,
            store,
        })) => {
            dynapi::commands::oauth_client_new(&store, &name, redirect_uris, &scopes, &public_url)
        }
        Command::Oauth(OauthCommand::Client(OauthClientCommand::AllowRedirect {
            id,
            uri,
            store,
        })) => dynapi::commands::oauth_allow_redirect(&store, &id, &uri),
        Command::Oauth(OauthCommand::List { store }) => dynapi::commands::oauth_list(&store),
        Command::Oauth(OauthCommand::Revoke { id, store }) => {
            dynapi::commands::oauth_revoke(&store, &id)
        }
        Command::Serve(args) => {
            init_tracing(args.log_format);
            let runtime = tokio::runtime::Runtime::new().expect("cannot start the async runtime");
            match runtime.block_on(serve(*args)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("dynapi: {e:#}");
                    1
                }
            }
        }
    };
    std::process::ExitCode::from(code.clamp(0, 255) as u8)
}

fn init_tracing(format: LogFormat) {
    // rmcp logs every MCP session's start and end at info: one line per
    // stateless request is noise, so it speaks at warn unless RUST_LOG says.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rmcp=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(args: dynapi::config::ServeArgs) -> anyhow::Result<()> {
    let config = Config::from_args(&args);
    let listen = config.listen;
    let started = dynapi::App::start(config).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    if started.created_workspace {
        println!(
            "Created the workspace {} from the template.",
            args.workspace.display()
        );
    }
    println!(
        "dynapi {} serving {} on http://{addr}",
        env!("CARGO_PKG_VERSION"),
        args.workspace.display()
    );
    match (&started.new_token, &started.token_file) {
        (Some(token), Some(file)) => println!(
            "Token (all scopes, shown once; kept in {}):\n  {token}",
            file.display()
        ),
        (None, Some(file)) => println!("Token: the one in {}", file.display()),
        _ => println!("Token: DYNAPI_TOKEN"),
    }
    println!("Try: curl -H \"Authorization: Bearer <token>\" http://{addr}/endpoints");

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections; running requests may finish");
        signal.cancel();
    });
    dynapi::serve(listener, started.app, shutdown).await
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot listen for SIGTERM");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
