//! The bench's stdio pair: `stdio-serve`, a minimal MCP server over stdin/stdout (an `echo`
//! tool, nothing else, so that the floor is the pipes), and `stdio-load`, a client that
//! starts a server command as its child, as agents do, and times `tools/call` on it, then
//! times starting a program (`/bin/true`): under `mcp-gateway exec` every exec is shown to
//! the daemon first.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Serves until stdin closes.
pub fn serve() -> Result<()> {
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in stdin.lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let (Some(id), Some(method)) = (v.get("id"), v["method"].as_str()) else {
            continue;
        };
        let answer = match method {
            "initialize" => json!({"jsonrpc": "2.0", "id": id, "result": {
                "protocolVersion": v["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "bench-stdio", "version": "1"}}}),
            "tools/list" => json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [{
                "name": "echo", "description": "Echoes text.",
                "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}},
                                "required": ["text"]}}]}}),
            "tools/call" => json!({"jsonrpc": "2.0", "id": id, "result": {"content": [
                {"type": "text", "text": v["params"]["arguments"]["text"]}]}}),
            _ => json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32601, "message": "no such method"}}),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

struct Server {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: BufReader<std::process::ChildStdout>,
    next: u64,
}

impl Server {
    fn request(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next += 1;
        let id = self.next;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(self.input, "{line}")?;
        self.input.flush()?;
        let mut answer = String::new();
        loop {
            answer.clear();
            if self.output.read_line(&mut answer)? == 0 {
                bail!("the server closed its stdout before answering {method}");
            }
            let v: Value = serde_json::from_str(&answer)
                .with_context(|| format!("the server wrote {answer:?}"))?;
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(v["result"].clone());
            }
        }
    }
}

/// Times calls for `seconds` after `warmup` untimed ones, then `execs` program starts.
#[allow(clippy::too_many_arguments)]
pub fn load(
    cmd: &[String],
    seconds: f64,
    warmup: usize,
    execs: usize,
    text_bytes: usize,
    watch: &[u32],
    cpu_all: impl Fn(&[u32]) -> Result<Vec<f64>>,
    summary: impl Fn(Vec<u64>) -> Value,
) -> Result<Value> {
    let (program, args) = cmd.split_first().context("no server command")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let input = child.stdin.take().expect("piped");
    let output = BufReader::new(child.stdout.take().expect("piped"));
    let mut s = Server {
        child,
        input,
        output,
        next: 0,
    };
    s.request(
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "mcp-bench-client", "version": "1"}}),
    )?;
    writeln!(
        s.input,
        "{}",
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
    )?;
    s.request("tools/list", json!({}))?;
    let text = "x".repeat(text_bytes);
    let params = json!({"name": "echo", "arguments": {"text": text}});
    let until = Instant::now() + Duration::from_secs(1);
    for _ in 0..warmup {
        s.request("tools/call", params.clone())?;
        if Instant::now() > until {
            break;
        }
    }
    let cpu0 = cpu_all(watch)?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut lat = Vec::with_capacity(64 * 1024);
    while Instant::now() < end {
        let t0 = Instant::now();
        let r = s.request("tools/call", params.clone())?;
        lat.push(t0.elapsed().as_nanos() as u64);
        if r["content"][0]["text"].as_str().map(str::len) != Some(text_bytes) {
            bail!("echo answered {r}");
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu1 = cpu_all(watch)?;
    drop(s.input);
    let _ = s.child.wait();
    let calls = lat.len();
    let cpu: serde_json::Map<String, Value> = watch
        .iter()
        .zip(cpu0.iter().zip(&cpu1))
        .map(|(pid, (a, b))| (pid.to_string(), json!(b - a)))
        .collect();
    let mut spawn = Vec::with_capacity(execs);
    for _ in 0..execs {
        let t0 = Instant::now();
        let status = Command::new("/bin/true")
            .status()
            .context("running /bin/true")?;
        spawn.push(t0.elapsed().as_nanos() as u64);
        if !status.success() {
            bail!("/bin/true failed: {status}");
        }
    }
    Ok(json!({
        "connections": 1,
        "calls": calls,
        "seconds": elapsed,
        "calls_per_s": calls as f64 / elapsed,
        "latency": summary(lat),
        "exec": summary(spawn),
        "cpu_s": cpu,
        "errors": 0,
    }))
}
