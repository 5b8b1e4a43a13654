//! Tells the `mlops` binary the optimisation level it is built at, so that `mlops up` can
//! say when it runs a build not meant for load (the `demo` profile's).

fn main() {
    let level = std::env::var("OPT_LEVEL").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=MLOPS_OPT_LEVEL={level}");
    println!("cargo:rerun-if-changed=build.rs");
}
