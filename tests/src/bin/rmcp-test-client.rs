//! `rmcp-test-client URL [--profile auto|rmcp|everything] [--protocol-version V]`: an MCP client
//! built on the official Rust SDK (rmcp) over Streamable HTTP, for the gateway's integration
//! tests.
//!
//! It initializes, lists the tools, calls the echo tool and a tool that reports progress
//! (collecting the `notifications/progress` it receives), reads a resource, lists the prompts
//! and gets one, then prints ONE JSON object on stdout — the same shape as
//! `tests/peers/mcp_client.py` prints — with nothing nondeterministic in it, so that a direct
//! run and a run through a proxy can be compared for equality. Any failure exits 2 with the
//! reason on stderr.
//!
//! Profiles: `rmcp` for rmcp-test-server, `everything` for @modelcontextprotocol/server-everything;
//! `auto` (the default) picks from the tool list. `--protocol-version` pins the version sent in
//! `initialize` (default: the SDK's, currently 2026-07-28, which rmcp and server-everything
//! answer with 2025-11-25). `--lifecycle discover|auto` starts with `server/discover` (the
//! stateless 2026-07-28 protocol) instead of `initialize`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock,
    GetPromptRequestParams, Implementation, JsonObject, ProgressNotificationParam, ProtocolVersion,
    ReadResourceRequestParams, ResourceContents,
};
use rmcp::service::{
    ClientInitializeError, ClientLifecycleMode, ClientServiceExt, NotificationContext,
    RunningService,
};
use rmcp::transport::streamable_http_client::StreamableHttpError;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceError, ServiceExt};
use serde_json::{json, Value};

const ECHO_TEXT: &str = "hello through the gateway";
const PROGRESS_STEPS: u32 = 4;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Profile {
    Auto,
    Rmcp,
    Everything,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Lifecycle {
    /// The `initialize` handshake (rmcp's `serve`).
    Initialize,
    /// `server/discover` and per-request metadata (protocol 2026-07-28), no fallback.
    Discover,
    /// `server/discover`, falling back to `initialize` for a legacy server.
    Auto,
}

#[derive(Parser)]
#[command(
    name = "rmcp-test-client",
    about = "rmcp MCP test client (Streamable HTTP)"
)]
struct Cli {
    /// The server's MCP endpoint, e.g. http://127.0.0.1:8080/mcp.
    url: String,
    #[arg(long, value_enum, default_value = "auto")]
    profile: Profile,
    /// Protocol version to offer in `initialize` (e.g. 2025-11-25).
    #[arg(long)]
    protocol_version: Option<String>,
    /// How to start the session.
    #[arg(long, value_enum, default_value = "initialize")]
    lifecycle: Lifecycle,
    /// Seconds for the whole run.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// The client handler: records every progress notification it receives.
#[derive(Clone)]
struct Recorder {
    config: ClientConfig,
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for Recorder {
    fn get_info(&self) -> ClientConfig {
        self.config.clone()
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }
}

/// What each server calls the things this client exercises.
struct Names {
    echo: (&'static str, &'static str),
    progress: (&'static str, Value),
    resource: &'static str,
    prompt: (&'static str, Value),
}

fn names(profile: Profile) -> Names {
    match profile {
        Profile::Everything => Names {
            echo: ("echo", "message"),
            progress: (
                "trigger-long-running-operation",
                json!({"duration": 1, "steps": PROGRESS_STEPS}),
            ),
            resource: "demo://resource/static/document/architecture.md",
            prompt: ("args-prompt", json!({"city": "Lyon", "state": "Rhone"})),
        },
        Profile::Rmcp | Profile::Auto => Names {
            echo: ("echo", "text"),
            progress: ("slow_count", json!({"steps": PROGRESS_STEPS})),
            resource: "test://hello",
            prompt: ("greet", json!({"name": "Ada"})),
        },
    }
}

/// A content block as plain JSON, without `_meta`.
fn content_json(block: &ContentBlock) -> Value {
    let mut v = serde_json::to_value(block).expect("content serializes");
    if let Some(o) = v.as_object_mut() {
        o.remove("_meta");
    }
    v
}

fn tool_content(name: &str, result: CallToolResult) -> Result<Vec<Value>> {
    let content: Vec<Value> = result.content.iter().map(content_json).collect();
    if result.is_error == Some(true) {
        bail!("tool {name} returned an error: {content:?}");
    }
    Ok(content)
}

fn object(v: &Value) -> JsonObject {
    v.as_object().cloned().unwrap_or_default()
}

async fn exercise(
    client: &RunningService<RoleClient, Recorder>,
    progress: &Mutex<Vec<ProgressNotificationParam>>,
    profile: Profile,
) -> Result<Value> {
    let info = client
        .peer_info()
        .context("no server info after initialize")?;
    let mut out = json!({
        "client": "rmcp",
        "protocol_version": info.protocol_version.to_string(),
        "server_name": info.server_info.as_ref().map(|i| i.name.clone()),
    });

    let tools = client.list_all_tools().await.context("tools/list")?;
    let mut tool_names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    tool_names.sort();
    let profile = match profile {
        Profile::Auto
            if tool_names
                .iter()
                .any(|n| n == "trigger-long-running-operation") =>
        {
            Profile::Everything
        }
        Profile::Auto => Profile::Rmcp,
        p => p,
    };
    let names = names(profile);
    out["profile"] = json!(match profile {
        Profile::Everything => "everything",
        _ => "rmcp",
    });
    out["tools"] = json!(tool_names);

    let (echo_tool, echo_arg) = names.echo;
    let echo = client
        .call_tool(
            CallToolRequestParams::new(echo_tool)
                .with_arguments(object(&json!({ echo_arg: ECHO_TEXT }))),
        )
        .await
        .with_context(|| format!("tools/call {echo_tool}"))?;
    let echo = tool_content(echo_tool, echo)?;
    out["echo"] = json!({
        "sent": ECHO_TEXT,
        "text": echo.first().and_then(|c| c.get("text")).cloned(),
        "content": echo,
    });

    // rmcp gives every request a progress token; the handler records what arrives.
    let (progress_tool, progress_args) = &names.progress;
    let result = client
        .call_tool(CallToolRequestParams::new(*progress_tool).with_arguments(object(progress_args)))
        .await
        .with_context(|| format!("tools/call {progress_tool}"))?;
    let result = tool_content(progress_tool, result)?;
    // Notifications and the response travel separately: give a late one a moment.
    for _ in 0..20 {
        if progress.lock().unwrap().len() >= PROGRESS_STEPS as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = progress.lock().unwrap().clone();
    out["progress"] = json!({
        "tool": progress_tool,
        "steps": PROGRESS_STEPS,
        "count": seen.len(),
        "final": seen.last().map(|p| p.progress),
        "total": seen.last().and_then(|p| p.total),
        "values": seen.iter().map(|p| p.progress).collect::<Vec<_>>(),
        "result": result,
    });

    let uri = names.resource;
    let read = client
        .read_resource(ReadResourceRequestParams::new(uri))
        .await
        .with_context(|| format!("resources/read {uri}"))?;
    let contents: Vec<Value> = read
        .contents
        .iter()
        .map(|c| match c {
            ResourceContents::TextResourceContents {
                uri,
                mime_type,
                text,
                ..
            } => json!({"uri": uri, "mime_type": mime_type, "text": text, "blob": null}),
            ResourceContents::BlobResourceContents {
                uri,
                mime_type,
                blob,
                ..
            } => json!({"uri": uri, "mime_type": mime_type, "text": null, "blob": blob}),
            other => json!({"unknown": serde_json::to_value(other).ok()}),
        })
        .collect();
    out["resource"] = json!({"uri": uri, "contents": contents});

    let prompts = client.list_all_prompts().await.context("prompts/list")?;
    let mut prompt_names: Vec<String> = prompts.iter().map(|p| p.name.to_string()).collect();
    prompt_names.sort();
    out["prompts"] = json!(prompt_names);
    let (prompt_name, prompt_args) = &names.prompt;
    let prompt = client
        .get_prompt(GetPromptRequestParams::new(*prompt_name).with_arguments(object(prompt_args)))
        .await
        .with_context(|| format!("prompts/get {prompt_name}"))?;
    let messages: Vec<Value> = prompt
        .messages
        .iter()
        .map(|m| json!({"role": m.role, "content": content_json(&m.content)}))
        .collect();
    out["prompt"] = json!({"name": prompt_name, "arguments": prompt_args, "messages": messages});
    Ok(out)
}

async fn run(cli: &Cli) -> Result<Value> {
    let mut config = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("rmcp-test-client", env!("CARGO_PKG_VERSION")),
    );
    if let Some(v) = &cli.protocol_version {
        config = config.with_protocol_version(
            serde_json::from_value::<ProtocolVersion>(json!(v))
                .with_context(|| format!("protocol version {v:?}"))?,
        );
    }
    let progress = Arc::new(Mutex::new(Vec::new()));
    let handler = Recorder {
        config,
        progress: progress.clone(),
    };
    let transport = StreamableHttpClientTransport::from_uri(cli.url.as_str());
    let modern = vec![ProtocolVersion::LATEST];
    let client = match cli.lifecycle {
        Lifecycle::Initialize => handler.serve(transport).await,
        Lifecycle::Discover => {
            handler
                .serve_with_lifecycle(
                    transport,
                    ClientLifecycleMode::Discover {
                        preferred_versions: modern,
                    },
                )
                .await
        }
        Lifecycle::Auto => {
            handler
                .serve_with_lifecycle(
                    transport,
                    ClientLifecycleMode::Auto {
                        preferred_versions: modern,
                        legacy_version: None,
                    },
                )
                .await
        }
    }
    .context("starting the session")?;
    let out = exercise(&client, &progress, cli.profile).await;
    // Ends the session (DELETE) whatever happened.
    let _ = client.cancel().await;
    out
}

type Cause<'a> = &'a (dyn std::error::Error + 'static);

/// The cause rmcp keeps out of `source()`: a transport failure, down to reqwest's error.
fn hidden_cause(e: Cause<'_>) -> Option<Cause<'_>> {
    if let Some(ClientInitializeError::TransportError { error, .. }) = e.downcast_ref() {
        return Some(error);
    }
    if let Some(ServiceError::TransportSend(error)) = e.downcast_ref() {
        return Some(error);
    }
    if let Some(StreamableHttpError::Client(error)) =
        e.downcast_ref::<StreamableHttpError<reqwest::Error>>()
    {
        return Some(error);
    }
    None
}

/// `e` with every cause, so that e.g. a refused certificate is named, not only "error sending
/// request".
fn reason(e: &anyhow::Error) -> String {
    let mut out = format!("{e:#}");
    let mut cause = e.chain().last().and_then(hidden_cause);
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        cause = hidden_cause(c).or_else(|| c.source());
    }
    out
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let out = tokio::time::timeout(Duration::from_secs(cli.timeout), run(&cli)).await;
    match out {
        Ok(Ok(v)) => println!("{v}"),
        Ok(Err(e)) => {
            eprintln!(
                "rmcp-test-client: session with {} failed: {}",
                cli.url,
                reason(&e)
            );
            std::process::exit(2);
        }
        Err(_) => {
            eprintln!(
                "rmcp-test-client: session with {} timed out after {} s",
                cli.url, cli.timeout
            );
            std::process::exit(2);
        }
    }
}
