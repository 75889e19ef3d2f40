//! `rmcp-test-server --listen 127.0.0.1:PORT`: an MCP server built on the official Rust SDK
//! (rmcp), serving Streamable HTTP at `/mcp`, for the gateway's integration tests.
//!
//! - tools: `echo {text}` → the text; `add {a, b}` → the sum; `slow_count {steps, delay_ms?}`
//!   → one `notifications/progress` per step (progress 1..=steps, total steps) when the request
//!   carries a progress token, then "done".
//! - resource: `test://hello` (text/plain "hello world").
//! - prompt: `greet {name}` → one user message "Hello, NAME! Please greet me back.".
//!
//! It prints `listening on ADDR` on stderr once the socket is bound.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = StreamableHttpServerConfig::default();
    if !cli.listen.ip().is_loopback() {
        // The default Host allow-list is loopback only (DNS-rebinding protection).
        config = config.disable_allowed_hosts();
    }
    let service: StreamableHttpService<TestServer, LocalSessionManager> =
        StreamableHttpService::new(|| Ok(TestServer::new()), Default::default(), config);
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", cli.listen))?;
    eprintln!("rmcp-test-server: listening on {}", listener.local_addr()?);
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
