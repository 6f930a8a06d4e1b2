//! Compiles the C shim against Debian's libdpdk (22.11) as `pkg-config`
//! describes it, and links DPDK's shared libraries. No bindgen: the Rust
//! side is written by hand in `src/lib.rs`.

use std::process::Command;

fn pkg_config(args: &[&str]) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(args)
        .arg("libdpdk")
        .output()
        .unwrap_or_else(|e| panic!("dpdk-sys: cannot run pkg-config ({e}); install pkg-config and libdpdk-dev"));
    if !out.status.success() {
        panic!(
            "dpdk-sys: `pkg-config {} libdpdk` failed: {}; install libdpdk-dev (DPDK 22.11)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout)
        .expect("pkg-config prints UTF-8")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn main() {
    println!("cargo:rerun-if-changed=csrc/shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");
    // Cargo makes this in-tree path dependency a workspace member, so
    // `cargo test --workspace` builds it even where nothing enables the
    // `dpdk` feature. Without DPDK it builds the declarations alone: nothing
    // calls them then, and a build that does (`--features dpdk`) fails to
    // link, after this warning says why.
    let found = Command::new("pkg-config")
        .args(["--exists", "libdpdk"])
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        println!(
            "cargo:warning=dpdk-sys: libdpdk not found by pkg-config; built without DPDK, so txlog's `dpdk` feature will not link (install pkg-config and libdpdk-dev 22.11)"
        );
        return;
    }
    let version = pkg_config(&["--modversion"]).join("");
    if !version.starts_with("22.11") {
        println!("cargo:warning=dpdk-sys is written against DPDK 22.11; found {version}");
    }
    let mut build = cc::Build::new();
    build.file("csrc/shim.c").warnings(false);
    let cflags = pkg_config(&["--cflags"]);
    let mut flags = cflags.iter();
    while let Some(flag) = flags.next() {
        if let Some(dir) = flag.strip_prefix("-I") {
            build.include(dir);
        } else if flag == "-include" {
            if let Some(header) = flags.next() {
                build.flag("-include").flag(header);
            }
        } else {
            build.flag(flag);
        }
    }
    build.compile("txlog_dpdk_shim");
    for flag in pkg_config(&["--libs"]) {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = flag.strip_prefix("-l") {
            // Only what the shim uses; the rest of DPDK stays unlinked.
            if [
                "rte_eal",
                "rte_ethdev",
                "rte_mbuf",
                "rte_mempool",
                "rte_ring",
                "rte_bus_vdev",
                "rte_kvargs",
                "rte_telemetry",
            ]
            .contains(&lib)
            {
                println!("cargo:rustc-link-lib=dylib={lib}");
            }
        }
    }
    // rte_vdev_init lives in the vdev bus driver, not listed by pkg-config's
    // short form.
    println!("cargo:rustc-link-lib=dylib=rte_bus_vdev");
}
