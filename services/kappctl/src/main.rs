//! `kappctl`: parses arguments, runs a command, and turns its outcome into an exit code and at
//! most one line on standard error.

use std::io::IsTerminal;

use clap::Parser;
use kappctl::error::exit;

fn main() {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info.payload().downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| info.payload().downcast_ref::<String>().cloned()).unwrap_or_default();
        eprintln!("error: kappctl failed unexpectedly: {msg} ({})", info.location().map(|l| l.to_string()).unwrap_or_default());
    }));
    let cli = match kappctl::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            std::process::exit(exit::FAILED);
        }
    };
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    let mut io = kappctl::Io { out: &mut out, err: &mut err, style: kappctl::render::style::Style::stdout(), terminal: std::io::stdout().is_terminal() };
    let code = match rt.block_on(kappctl::run(cli, &kappctl::creds::Fallbacks::from_env(), &mut io)) {
        Ok(code) => code,
        // A closed pipe (`kappctl get pods | head`) is not an error.
        Err(kappctl::error::Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            let _ = std::io::Write::flush(&mut out);
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    let _ = std::io::Write::flush(&mut out);
    drop(rt);
    std::process::exit(code);
}
