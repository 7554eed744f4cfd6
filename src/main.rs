//! The `zipmerge` command line: a thin layer over the library, one module per subcommand.

mod cli;

fn main() {
    // Die quietly on a closed pipe (`zipmerge inspect ... | head`) like other Unix tools, instead
    // of panicking inside println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let code = match cli::run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
