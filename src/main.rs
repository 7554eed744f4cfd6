//! The `zipmerge` command line: a thin layer over the library, one module per subcommand.

mod cli;

fn main() {
    let code = match cli::run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
