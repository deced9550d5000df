//! Benchmark: `rotor discover` over a generated tree of N files (default 100,000), shaped like a
//! monorepo: per service a directory of code (Python, TypeScript, Go), env files, compose and
//! Kubernetes YAML, and ten times as many files discover never opens (Markdown, images' stand-ins),
//! plus a `.gitignore`d build directory. Prints the files walked and read, the references and
//! findings, the wall time of the scan, files per second, and the peak RSS of this process
//! before and after (the scan keeps references, never file contents).
//!
//! Run: `cargo bench --bench discover` (options: `-- --files N --keep DIR`).
#![allow(clippy::print_stdout)]

mod common;

use std::path::Path;
use std::time::Instant;

use common::arg;

/// Peak resident set (VmHWM) of this process, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Writes the tree: `files` files in all, about one in twelve one that discover reads.
fn generate(root: &Path, files: usize) -> usize {
    std::fs::write(root.join(".gitignore"), "build/\n").unwrap();
    let mut written = 1;
    let mut service = 0;
    while written < files {
        let dir = root.join(format!("services/svc{service:05}"));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::create_dir_all(dir.join("docs")).unwrap();
        std::fs::create_dir_all(dir.join("build")).unwrap();
        let env = ["development", "test", "staging", "production"][service % 4];
        let read = [
            (
                "src/app.py",
                format!(
                    "import os\nKEY = os.environ['SERVICE_SECRET']\nOTHER = os.getenv('SVC{service}_API_TOKEN')\n"
                ),
            ),
            (
                "src/index.ts",
                "const k = process.env.JWT_SECRET_KEY;\nexport default k;\n".to_string(),
            ),
            (
                "src/main.go",
                "package main\nimport \"os\"\nfunc main() { _ = os.Getenv(\"SERVICE_SECRET\") }\n"
                    .to_string(),
            ),
            (
                ".env.development",
                format!(
                    "SERVICE_SECRET=dev-{service:08}-abcdefghijklmnopqrstuvwxyz012345\nJWT_SECRET_KEY=${{SERVICE_SECRET}}\n"
                ),
            ),
            (
                "docker-compose.yml",
                format!(
                    "services:\n  svc{service}:\n    env_file: .env.development\n    environment:\n      SECRET_KEY: ${{SERVICE_SECRET}}\n"
                ),
            ),
            (
                &format!("k8s/{env}.yaml"),
                format!(
                    "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: svc{service}\n  namespace: {env}\nspec:\n  template:\n    spec:\n      containers:\n        - name: app\n          env:\n            - name: SERVICE_SECRET\n              valueFrom:\n                secretKeyRef: {{name: service-secret, key: value}}\n"
                ),
            ),
        ];
        std::fs::create_dir_all(dir.join("k8s")).unwrap();
        for (name, text) in read {
            if written >= files {
                break;
            }
            std::fs::write(dir.join(name), text).unwrap();
            written += 1;
        }
        // Files discover never opens, and ignored ones.
        for k in 0..60 {
            if written >= files {
                break;
            }
            let name = if k % 6 == 0 {
                format!("build/out{k}.py")
            } else {
                format!("docs/page{k}.md")
            };
            std::fs::write(dir.join(name), "nothing to see\n").unwrap();
            written += 1;
        }
        service += 1;
    }
    written
}

fn main() {
    let files: usize = arg("--files")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let tmp = tempfile::Builder::new()
        .prefix("rotor-bench-discover-")
        .tempdir()
        .unwrap();
    let root = match arg("--keep") {
        Some(d) => std::path::PathBuf::from(d),
        None => tmp.path().to_path_buf(),
    };
    std::fs::create_dir_all(&root).unwrap();
    let t = Instant::now();
    let total = generate(&root, files);
    println!(
        "generated {total} files in {:.1}s under {}",
        t.elapsed().as_secs_f64(),
        root.display()
    );
    let before = peak_rss_mib();
    let opts = rotor::discover::Options::default();
    let t = Instant::now();
    let report = rotor::discover::scan(&root, &opts).expect("scan");
    let secs = t.elapsed().as_secs_f64();
    let after = peak_rss_mib();
    println!("discover over {total} files (target: at most 5 s, bounded memory)");
    println!("  files read       {}", report.files);
    println!("  references       {}", report.references.len());
    println!("  findings         {}", report.findings.len());
    println!("  secrets          {}", report.secrets.len());
    println!("  wall time        {secs:.2} s");
    println!("  files/s (walked) {:.0}", total as f64 / secs);
    println!("  peak RSS         {before:.1} MiB before, {after:.1} MiB after the scan");
}
