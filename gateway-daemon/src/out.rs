//! What the commands print on stdout. A reader that goes away early (`| head -1`) ends the
//! command quietly, as it ends `cat`: Rust ignores SIGPIPE, so a plain `println!` would
//! panic instead. Any other write error ends it with that error.

use std::io::Write;

/// Writes `args` (and a newline, with `newline`) to stdout.
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("mcp-gateway: error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }
}

/// `println!` for the commands' output.
macro_rules! outln {
    () => { $crate::out::write(format_args!(""), true) };
    ($($t:tt)*) => { $crate::out::write(format_args!($($t)*), true) };
}

/// `print!` for the commands' output.
macro_rules! out {
    ($($t:tt)*) => { $crate::out::write(format_args!($($t)*), false) };
}
