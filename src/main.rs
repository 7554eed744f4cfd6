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
    // Keep freed activation buffers mapped between layers and batches (the settings PyTorch is
    // benchmarked with: MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ = 4 GiB). Without it
    // glibc unmaps every buffer over 32 MiB on free and the next layer page-faults it back in.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
    // burn materialises a loaded optimizer state on its *default* device
    // (`ModuleOptimizer::load_record`, burn-optim 0.22), which is the first GPU backend compiled
    // in: `train --resume` on the CPU would start Vulkan (and Mesa would print
    // `error: XDG_RUNTIME_DIR ...` lines) only to move the state to the CPU at the next step.
    // Every other tensor gets an explicit device, so pinning burn's default to the CPU changes
    // nothing else; a user's own BURN_DEVICE is kept. Set before any thread is started.
    if std::env::var_os("BURN_DEVICE").is_none() {
        std::env::set_var("BURN_DEVICE", "flex");
    }
    let code = match cli::run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", cli::one_line(&format!("{e:#}")));
            if e.chain().any(|c| c.is::<cli::Usage>()) {
                2
            } else {
                1
            }
        }
    };
    std::process::exit(code);
}
