//! Records the git commit the binary is built from (`ZIPMERGE_GIT_COMMIT`, read by
//! `src/provenance.rs` with `option_env!`), when built from a checkout with git installed.

fn main() {
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output();
    if let Ok(o) = out {
        let commit = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if o.status.success() && !commit.is_empty() {
            println!("cargo:rustc-env=ZIPMERGE_GIT_COMMIT={commit}");
        }
    }
}
