//! An MCP server on rmcp (3.11, its `TaskManager`) that answers calls with tasks (the
//! `io.modelcontextprotocol/tasks` extension of 2026-07-28), for the gateway's tests:
//! `deploy` completes with a result that carries a secret; `ask` waits for the client's
//! answer to a sampling request (`input_required` in `tasks/get`, answered by
//! `tasks/update`). Streamable HTTP at /mcp on `--listen` (loopback).

// Sampling is deprecated (SEP-2577) but servers still send it, and the gateway decides it.
#![allow(deprecated)]

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock,
    CreateMessageRequest, CreateMessageRequestParams, CreateTaskResult, GetTaskParams,
    GetTaskResult, InputRequest, ListToolsResult, PaginatedRequestParams, SamplingMessage,
    ServerCapabilities, ServerConfig, Tool, UpdateTaskParams,
};
use rmcp::service::RequestContext;
use rmcp::task_manager::{TaskManager, TaskOptions};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use tokio::net::TcpListener;

/// What a redactor must take out of the deploy task's result.
const SECRET: &str = "AKIAZ7QX3M2L5RT6PW4N";

#[derive(Parser)]
#[command(
    name = "rmcp-task-server",
    about = "rmcp MCP server answering with tasks"
)]
struct Cli {
    #[arg(long)]
    listen: SocketAddr,
}

#[derive(Clone)]
struct TaskServer {
    tasks: TaskManager,
}

fn empty_schema() -> Arc<serde_json::Map<String, serde_json::Value>> {
    let mut m = serde_json::Map::new();
    m.insert("type".into(), "object".into());
    Arc::new(m)
}

impl ServerHandler for TaskServer {
    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new("deploy", "Deploys, as a task.", empty_schema()),
            Tool::new("ask", "Asks the client's model, as a task.", empty_schema()),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let ask = request.name == "ask";
        let task = self
            .tasks
            .spawn(TaskOptions::new().with_poll_interval_ms(10), move |ctx| {
                Box::pin(async move {
                    if ask {
                        let params = CreateMessageRequestParams::new(
                            vec![SamplingMessage::user_text("what is 2+2?")],
                            10,
                        );
                        let req = InputRequest::CreateMessage(CreateMessageRequest::new(params));
                        let answer = ctx.request_input("q", req).await?;
                        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                            "model said {answer}"
                        ))]))
                    } else {
                        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                            "deployed with key {SECRET}"
                        ))]))
                    }
                })
            });
        Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        Ok(GetTaskResult::new(self.tasks.get_task(&request.task_id)?))
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.tasks
            .update_task(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.tasks.cancel_task(&request.task_id)
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tasks()
                .build(),
        )
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tasks = TaskManager::new();
    let service: StreamableHttpService<TaskServer, LocalSessionManager> =
        StreamableHttpService::new(
            move || {
                Ok(TaskServer {
                    tasks: tasks.clone(),
                })
            },
            Default::default(),
            StreamableHttpServerConfig::default(),
        );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = TcpListener::bind(cli.listen).await?;
    eprintln!("rmcp-task-server: listening on {}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}
