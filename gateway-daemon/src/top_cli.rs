//! `mcp-gateway top`: a live view of the running daemon, refreshed from the admin
//! socket's `status` op. Rates (calls/s, denials/s) come from successive answers. Not on a
//! terminal, it prints one plain snapshot and exits, so it can be scripted.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gateway_daemon::config::Config;
use gateway_daemon::status::{self, breakdown, format_uptime};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, Wrap};
use ratatui::{DefaultTerminal, Frame};
use serde_json::Value;

use crate::status_cli::fetch_from;

/// The shortest refresh interval: the daemon is not to be polled in a tight loop.
pub const MIN_INTERVAL: Duration = Duration::from_millis(200);

pub fn run(config: &Path, interval: Duration) -> anyhow::Result<()> {
    let socket = Config::load(config)?.config.admin.socket;
    // The first answer is fetched before the screen is taken, so a daemon that is not
    // running is reported like any other command's error.
    let first = fetch_from(&socket)?;
    if !std::io::stdout().is_terminal() {
        out!("{}", status::render_text(&first));
        return Ok(());
    }
    let interval = interval.max(MIN_INTERVAL);
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("top-status".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let answer = fetch_from(&socket).map_err(|e| format!("{e:#}"));
            if tx.send((Instant::now(), answer)).is_err() {
                break;
            }
        })?;
    let mut view = View::new(first, Instant::now(), interval);
    let mut screen = Screen::enter()?;
    live(&mut screen.terminal, &mut view, &rx)
}

/// Until a quit key: redraws when an answer arrives, on input, and every second (for the
/// "updated ... ago" clock).
fn live(
    terminal: &mut DefaultTerminal,
    view: &mut View,
    rx: &mpsc::Receiver<(Instant, Result<Value, String>)>,
) -> anyhow::Result<()> {
    let mut drawn_at = None::<Instant>;
    let mut dirty = true;
    loop {
        if dirty || drawn_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            terminal.draw(|f| draw(f, view, Instant::now()))?;
            drawn_at = Some(Instant::now());
            dirty = false;
        }
        if event::poll(Duration::from_millis(100))? {
            match event::read()? {
                Event::Key(k) if quits(&k) => return Ok(()),
                _ => dirty = true,
            }
        }
        while let Ok((at, answer)) = rx.try_recv() {
            view.update(at, answer);
            dirty = true;
        }
    }
}

fn quits(k: &KeyEvent) -> bool {
    k.kind == KeyEventKind::Press
        && match k.code {
            KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => true,
            // Raw mode turns Ctrl-C into a key press rather than SIGINT.
            KeyCode::Char('c') => k.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// The full-screen terminal, given back (raw mode off, main screen) when dropped, on
/// return and on error alike; `ratatui::try_init` also installs a panic hook that does it.
struct Screen {
    terminal: DefaultTerminal,
}

impl Screen {
    fn enter() -> anyhow::Result<Self> {
        match ratatui::try_init() {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                ratatui::restore();
                Err(anyhow::Error::new(e).context("taking over the terminal"))
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.terminal.show_cursor();
        ratatui::restore();
    }
}

/// What the screen shows: the latest answer, and rates from the one before.
pub struct View {
    report: Value,
    at: Instant,
    rates: Rates,
    error: Option<String>,
    interval: Duration,
}

/// Per-second rates between two answers; empty after the first one, or when the daemon
/// restarted between them (its counters started again from zero).
#[derive(Debug, Default, PartialEq)]
pub struct Rates {
    pub calls: Option<f64>,
    pub servers: BTreeMap<String, f64>,
    pub denials: BTreeMap<String, f64>,
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

pub fn rates(prev: &Value, cur: &Value, dt: Duration) -> Rates {
    let secs = dt.as_secs_f64();
    if secs <= 0.0 || prev["started_at"] != cur["started_at"] {
        return Rates::default();
    }
    let rate = |a: &Value, b: &Value| count(b).checked_sub(count(a)).map(|d| d as f64 / secs);
    let (pm, cm) = (&prev["metrics"], &cur["metrics"]);
    let by_server = |m: &Value| -> BTreeMap<String, Value> {
        m["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s["server"].as_str()?.to_owned(), s["calls"].clone())))
            .collect()
    };
    let before = by_server(pm);
    let servers = by_server(cm)
        .into_iter()
        .filter_map(|(name, calls)| {
            let r = rate(before.get(&name).unwrap_or(&Value::Null), &calls)?;
            Some((name, r))
        })
        .collect();
    let denials = cm["denials"]["by_reason"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(reason, n)| {
            Some((
                reason.clone(),
                rate(&pm["denials"]["by_reason"][reason], n)?,
            ))
        })
        .collect();
    Rates {
        calls: rate(&pm["calls"]["total"], &cm["calls"]["total"]),
        servers,
        denials,
    }
}

impl View {
    pub fn new(report: Value, at: Instant, interval: Duration) -> Self {
        Self {
            report,
            at,
            rates: Rates::default(),
            error: None,
            interval,
        }
    }

    /// A new answer, or why there is none (the last good answer stays on screen).
    pub fn update(&mut self, at: Instant, answer: Result<Value, String>) {
        match answer {
            Ok(report) => {
                self.rates = rates(&self.report, &report, at.saturating_duration_since(self.at));
                self.report = report;
                self.at = at;
                self.error = None;
            }
            Err(e) => self.error = Some(e),
        }
    }
}

fn rate_text(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.1}"))
}

fn joined(v: &Value) -> String {
    let items: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// A number in a table, right-aligned under its heading.
fn num(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}

/// Column headings; those of the `numeric` columns are right-aligned like their numbers.
fn heading(names: &[&'static str], numeric: &[usize]) -> Row<'static> {
    Row::new(names.iter().enumerate().map(|(i, n)| {
        let line = Line::from(*n);
        Cell::from(if numeric.contains(&i) {
            line.right_aligned()
        } else {
            line
        })
    }))
    .bold()
}

pub fn draw(f: &mut Frame, view: &View, now: Instant) {
    let r = &view.report;
    let m = &r["metrics"];
    let error_height = if view.error.is_some() { 3 } else { 0 };
    let [header, error, servers, bottom, footer] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Length(error_height),
        Constraint::Fill(2),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(f.area());

    let pending = count(&r["pending_approvals"]);
    let waiting = count(&r["pins"]["waiting"]);
    let attention = Style::new().fg(Color::Yellow).bold();
    let lines = vec![
        Line::from(vec![
            Span::raw(format!(
                "mcp-gateway {}",
                r["version"].as_str().unwrap_or("?")
            ))
            .bold(),
            Span::raw(format!(
                "   up {}   listeners {}",
                format_uptime(count(&r["uptime_s"])),
                joined(&r["listeners"]),
            )),
        ]),
        Line::from(format!(
            "metrics {}   sessions {}   connections {}",
            r["metrics_listen"]
                .as_str()
                .map_or_else(|| "off".into(), |a| format!("http://{a}/metrics")),
            count(&r["sessions"]["total"]),
            count(&m["connections_open"]),
        )),
        Line::from(format!(
            "calls {} ({}/s)   denials {}   redactions {}",
            count(&m["calls"]["total"]),
            rate_text(view.rates.calls),
            count(&m["denials"]["total"]),
            count(&m["redactions"]),
        )),
        Line::from(vec![
            Span::styled(
                format!("approvals pending {pending}"),
                if pending > 0 { attention } else { Style::new() },
            ),
            Span::raw("   "),
            Span::styled(
                format!("pins waiting for review {waiting}"),
                if waiting > 0 { attention } else { Style::new() },
            ),
        ]),
    ];
    f.render_widget(Paragraph::new(lines), header);
    if let Some(e) = &view.error {
        f.render_widget(
            Paragraph::new(format!(
                "no answer: {e} (showing the answer from {}s ago)",
                now.saturating_duration_since(view.at).as_secs()
            ))
            .style(Style::new().fg(Color::Red).bold())
            .wrap(Wrap { trim: true }),
            error,
        );
    }

    draw_servers(f, servers, view);

    let [denials, sessions, pins] = Layout::horizontal([
        Constraint::Fill(1),
        Constraint::Fill(1),
        Constraint::Fill(1),
    ])
    .areas(bottom);
    draw_denials(f, denials, view);
    draw_sessions(f, sessions, r);
    draw_pins(f, pins, r);

    f.render_widget(
        Paragraph::new(format!(
            "q quit   refresh every {}   updated {}s ago",
            humantime::format_duration(view.interval),
            now.saturating_duration_since(view.at).as_secs()
        ))
        .style(Style::new().fg(Color::DarkGray)),
        footer,
    );
}

fn draw_servers(f: &mut Frame, area: Rect, view: &View) {
    let mut rows: Vec<(String, Option<f64>, u64, String)> = view.report["metrics"]["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let name = s["server"].as_str().unwrap_or("?").to_owned();
            let rate = view.rates.servers.get(&name).copied();
            (name, rate, count(&s["calls"]), breakdown(&s["by_outcome"]))
        })
        .collect();
    rows.sort_by(|a, b| {
        b.1.unwrap_or(0.0)
            .total_cmp(&a.1.unwrap_or(0.0))
            .then(b.2.cmp(&a.2))
            .then_with(|| a.0.cmp(&b.0))
    });
    let table = Table::new(
        rows.into_iter().map(|(name, rate, calls, outcomes)| {
            Row::new([
                Cell::from(name),
                num(rate_text(rate)),
                num(calls.to_string()),
                Cell::from(outcomes),
            ])
        }),
        [
            Constraint::Fill(1),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Fill(2),
        ],
    )
    .column_spacing(2)
    .header(heading(
        &["SERVER", "CALLS/S", "CALLS", "OUTCOMES"],
        &[1, 2],
    ))
    .block(Block::bordered().title(" servers "));
    f.render_widget(table, area);
}

fn draw_denials(f: &mut Frame, area: Rect, view: &View) {
    let by_reason = &view.report["metrics"]["denials"]["by_reason"];
    let rows: Vec<Row> = by_reason
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| count(n) > 0)
        .map(|(reason, n)| {
            Row::new([
                Cell::from(reason.clone()),
                num(count(n).to_string()),
                num(rate_text(view.rates.denials.get(reason).copied())),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Min(8),
            Constraint::Length(7),
            Constraint::Length(6),
        ],
    )
    .header(heading(&["REASON", "TOTAL", "/S"], &[1, 2]))
    .block(Block::bordered().title(" denials "));
    f.render_widget(table, area);
}

fn draw_sessions(f: &mut Frame, area: Rect, r: &Value) {
    let rows: Vec<Row> = r["sessions"]["by_principal"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            Row::new([
                Cell::from(p["principal"].as_str().unwrap_or("?").to_owned()),
                num(count(&p["sessions"]).to_string()),
            ])
        })
        .collect();
    let table = Table::new(rows, [Constraint::Min(8), Constraint::Length(8)])
        .header(heading(&["PRINCIPAL", "SESSIONS"], &[1]))
        .block(Block::bordered().title(" sessions "));
    f.render_widget(table, area);
}

fn draw_pins(f: &mut Frame, area: Rect, r: &Value) {
    let lines: Vec<Line> = r["pins"]["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            Line::from(format!(
                "{}: {}",
                s["server"].as_str().unwrap_or("?"),
                joined(&s["waiting"])
            ))
        })
        .collect();
    let text = if lines.is_empty() {
        vec![Line::from("nothing waits for review")]
    } else {
        lines
    };
    f.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" pins waiting for review ")),
        area,
    );
}
