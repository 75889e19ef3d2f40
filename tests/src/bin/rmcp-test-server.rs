//! `rmcp-test-server --listen 127.0.0.1:PORT [--tls-cert CERT.pem --tls-key KEY.pem]`: an MCP
//! server built on the official Rust SDK (rmcp), serving Streamable HTTP at `/mcp`, for the
//! gateway's integration tests. With a certificate it serves HTTPS (ALPN `h2` and `http/1.1`).
//!
//! - tools: `echo {text}` → the text; `add {a, b}` → the sum; `slow_count {steps, delay_ms?}`
//!   → one `notifications/progress` per step (progress 1..=steps, total steps) when the request
//!   carries a progress token, then "done".
//! - resource: `test://hello` (text/plain "hello world").
//! - prompt: `greet {name}` → one user message "Hello, NAME! Please greet me back.".
//!
//! It prints `listening on ADDR` on stderr once the socket is bound, and a line per failed TLS
//! handshake.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;

use anyhow::Context;
use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rmcp::handler::server::router::prompt::PromptRouter;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    Implementation, ListResourcesResult, PaginatedRequestParams, ProgressNotificationParam,
    PromptMessage, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    RequestMetaObject, Resource, ResourceContents, Role, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{
    prompt, prompt_handler, prompt_router, schemars, tool, tool_handler, tool_router, ErrorData,
    Peer, RoleServer, ServerHandler,
};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig as TlsConfig;
use tokio_rustls::TlsAcceptor;

const RESOURCE_URI: &str = "test://hello";
const RESOURCE_TEXT: &str = "hello world";

#[derive(Parser)]
#[command(
    name = "rmcp-test-server",
    about = "rmcp MCP test server (Streamable HTTP at /mcp)"
)]
struct Cli {
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM, leaf first).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// Text to send back.
    text: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct AddArgs {
    a: i64,
    b: i64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct SlowCountArgs {
    /// Number of steps (one progress notification each).
    steps: u32,
    /// Pause before each step, in milliseconds (default 100).
    delay_ms: Option<u64>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct GreetArgs {
    /// Who to greet.
    name: String,
}

#[derive(Clone)]
struct TestServer {
    tool_router: ToolRouter<Self>,
    prompt_router: PromptRouter<Self>,
}

#[tool_router]
impl TestServer {
    fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
            prompt_router: Self::prompt_router(),
        }
    }

    #[tool(description = "Returns the text it is given")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "Returns the sum of two integers")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> Result<String, ErrorData> {
        a.checked_add(b)
            .map(|s| s.to_string())
            .ok_or_else(|| ErrorData::invalid_params("a + b overflows", None))
    }

    #[tool(
        description = "Counts to `steps`, sending a progress notification per step when the \
                       request has a progress token, then returns \"done\""
    )]
    async fn slow_count(
        &self,
        Parameters(SlowCountArgs { steps, delay_ms }): Parameters<SlowCountArgs>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
    ) -> Result<String, ErrorData> {
        if steps > 1000 {
            return Err(ErrorData::invalid_params(
                "steps must be at most 1000",
                None,
            ));
        }
        let token = meta.get_progress_token();
        let delay = Duration::from_millis(delay_ms.unwrap_or(100).min(10_000));
        for step in 1..=steps {
            tokio::time::sleep(delay).await;
            if let Some(token) = &token {
                peer.notify_progress(
                    ProgressNotificationParam::new(token.clone(), f64::from(step))
                        .with_total(f64::from(steps))
                        .with_message(format!("step {step} of {steps}")),
                )
                .await
                .map_err(|e| {
                    ErrorData::internal_error(format!("sending progress failed: {e}"), None)
                })?;
            }
        }
        Ok("done".into())
    }
}

#[prompt_router]
impl TestServer {
    #[prompt(name = "greet", description = "Greets someone by name")]
    async fn greet(
        &self,
        Parameters(GreetArgs { name }): Parameters<GreetArgs>,
    ) -> Vec<PromptMessage> {
        vec![PromptMessage::new_text(
            Role::User,
            format!("Hello, {name}! Please greet me back."),
        )]
    }
}

#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for TestServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new(
            "rmcp-test-server",
            env!("CARGO_PKG_VERSION"),
        ))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(vec![Resource::new(
            RESOURCE_URI,
            "hello",
        )
        .with_mime_type("text/plain")
        .with_description("A fixed text resource")]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if request.uri != RESOURCE_URI {
            return Err(ErrorData::resource_not_found(
                format!("no resource {}", request.uri),
                None,
            ));
        }
        Ok(
            ReadResourceResult::new(vec![ResourceContents::text(RESOURCE_TEXT, RESOURCE_URI)])
                .into(),
        )
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading a private key from {}", key.display()))?;
    let mut config = TlsConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not make a TLS server identity")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` over TLS until ctrl-c. A client that fails its handshake (e.g. it does not
/// trust the certificate) costs only its own connection.
async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: axum::Router,
) -> anyhow::Result<()> {
    let service = TowerToHyperService::new(router);
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("rmcp-test-server: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        // Small writes (SSE events) must not wait on the client's delayed ACKs.
        let _ = tcp.set_nodelay(true);
        let (acceptor, service) = (acceptor.clone(), service.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    eprintln!("rmcp-test-server: TLS handshake with {peer} failed: {e}");
                    return;
                }
            };
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                eprintln!("rmcp-test-server: connection from {peer}: {e}");
            }
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let mut config = StreamableHttpServerConfig::default();
    if !cli.listen.ip().is_loopback() {
        // The default Host allow-list (localhost, 127.0.0.1, ::1) is loopback only
        // (DNS-rebinding protection).
        config = config.disable_allowed_hosts();
    }
    let service: StreamableHttpService<TestServer, LocalSessionManager> =
        StreamableHttpService::new(|| Ok(TestServer::new()), Default::default(), config);
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = TcpListener::bind(cli.listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", cli.listen))?;
    let addr = listener.local_addr()?;
    if let Some(acceptor) = tls {
        eprintln!("rmcp-test-server: listening on {addr} (TLS)");
        return serve_tls(listener, acceptor, router).await;
    }
    eprintln!("rmcp-test-server: listening on {addr}");
    axum::serve(
        listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        }),
        router,
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
