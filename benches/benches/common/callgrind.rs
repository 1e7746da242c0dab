//! Instructions per call, counted by callgrind: a figure that repeats to within a percent on a
//! shared 2-core machine where wall-clock throughput swings by ±30 % between runs.
//!
//! The bench runs itself again under `valgrind --tool=callgrind`, twice per configuration: the
//! same start-up, then [`FEW`] and then [`MANY`] sequential calls. The difference of the two
//! totals over `MANY - FEW` calls is what one call costs, with start-up and warm-up cancelled.
//! Everything in the process counts: the client and, in the benches that run it in-process,
//! the server it calls.

use std::process::Command;

/// Set in the child: `<configuration>:<calls>`.
const ENV: &str = "MICRO_BENCH_CALLGRIND";
/// Calls of the shorter run (also the warm-up of the longer one).
const FEW: u64 = 500;
/// Calls of the longer run.
const MANY: u64 = 2_500;

/// When this process is a child run under callgrind: the configuration and how many calls to
/// make, one after the other, before exiting.
pub(crate) fn child() -> Option<(String, u64)> {
    let value = std::env::var(ENV).ok()?;
    let (configuration, calls) = value.rsplit_once(':')?;
    Some((configuration.to_string(), calls.parse().ok()?))
}

/// Instructions per call of `configuration` (what [`child`] hands the bench), or why they were
/// not counted (valgrind missing, a run failing).
pub(crate) fn per_call(configuration: &str) -> Result<f64, String> {
    let few = total(configuration, FEW)?;
    let many = total(configuration, MANY)?;
    if many <= few {
        return Err(format!(
            "{configuration}: {MANY} calls counted {many} instructions, {FEW} counted {few}"
        ));
    }
    Ok((many - few) as f64 / (MANY - FEW) as f64)
}

/// The instructions callgrind counted in a whole child run making `calls` calls.
fn total(configuration: &str, calls: u64) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| format!("this bench's path: {e}"))?;
    let output = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(&exe)
        .env(ENV, format!("{configuration}:{calls}"))
        .output()
        .map_err(|e| {
            format!("cannot run valgrind ({e}); `scripts/setup` installs it (Debian `valgrind`)")
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "{configuration} with {calls} calls under callgrind: {}; stderr:\n{stderr}",
            output.status
        ));
    }
    // `==1234== Collected : 123456789`
    stderr
        .lines()
        .find_map(|line| line.split_once("Collected :"))
        .and_then(|(_, count)| count.trim().parse().ok())
        .ok_or_else(|| format!("no `Collected :` total in callgrind's output:\n{stderr}"))
}

/// Prints instructions per call for `a` and `b` and their ratio `b/a` (what `a` would reach of
/// `b`'s throughput were the CPU the only limit), or why they were not counted.
pub(crate) fn print_ratio(a: (&str, &str), b: (&str, &str), target: f64) {
    println!(
        "instructions per call under callgrind (every thread of the process, {FEW} vs {MANY} sequential calls):"
    );
    let counted = per_call(a.0).and_then(|ia| Ok((ia, per_call(b.0)?)));
    match counted {
        Ok((ia, ib)) => {
            println!("  ({}) {}: {ia:.0}", a.0, a.1);
            println!("  ({}) {}: {ib:.0}", b.0, b.1);
            let ratio = ib / ia;
            println!(
                "  ratio {b}/{a} {ratio:.3} (target >= {target}: {})",
                if ratio >= target { "met" } else { "MISSED" },
                a = a.0,
                b = b.0,
            );
        }
        Err(why) => println!("  skipped: {why}"),
    }
}
