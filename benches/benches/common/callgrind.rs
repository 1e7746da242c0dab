//! Instructions per call, counted by callgrind: a figure that repeats to within a percent on a
//! shared 2-core machine where wall-clock throughput swings by ±30 % between runs.
//!
//! A process is run under `valgrind --tool=callgrind` twice: the same start-up, then [`FEW`] and
//! then [`MANY`] sequential calls. The difference of the two totals over `MANY - FEW` calls is
//! what one call costs, with start-up and warm-up cancelled. Everything in that process counts.
//!
//! To see where the instructions go, set `MICRO_BENCH_CALLGRIND_OUT` to a file name prefix: each
//! run then writes its profile to `<prefix>.<pid>` for `callgrind_annotate` (compare the runs of
//! [`FEW`] and [`MANY`] calls of one configuration to leave start-up out).

use std::process::Command;

/// Set in a child that [`per_call_in_child`] runs: `<configuration>:<calls>`.
const ENV: &str = "MICRO_BENCH_CALLGRIND";
/// Calls of the shorter run (also the warm-up of the longer one).
pub(crate) const FEW: u64 = 500;
/// Calls of the longer run.
pub(crate) const MANY: u64 = 2_500;

/// `valgrind --tool=callgrind` ready to run this bench's binary (arguments to be added), or why
/// it cannot.
pub(crate) fn command() -> Result<Command, String> {
    let exe = std::env::current_exe().map_err(|e| format!("this bench's path: {e}"))?;
    let probe = Command::new("valgrind").arg("--version").output();
    if !probe.is_ok_and(|out| out.status.success()) {
        return Err(
            "valgrind is not installed; `scripts/setup` installs it (Debian `valgrind`)".into(),
        );
    }
    let mut command = Command::new("valgrind");
    let out = std::env::var("MICRO_BENCH_CALLGRIND_OUT")
        .map_or_else(|_| "/dev/null".to_string(), |prefix| format!("{prefix}.%p"));
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={out}"))
        .arg(exe);
    Ok(command)
}

/// The instructions callgrind counted, from what it wrote on stderr at exit
/// (`==1234== Collected : 123456789`).
pub(crate) fn collected(stderr: &str) -> Result<u64, String> {
    stderr
        .lines()
        .find_map(|line| line.split_once("Collected :"))
        .and_then(|(_, count)| count.trim().parse().ok())
        .ok_or_else(|| format!("no `Collected :` total in callgrind's output:\n{stderr}"))
}

/// Instructions per call, from the totals of a run of [`FEW`] and one of [`MANY`] calls.
pub(crate) fn per_call(few: u64, many: u64) -> Result<f64, String> {
    if many <= few {
        return Err(format!(
            "{MANY} calls counted {many} instructions, {FEW} counted {few}"
        ));
    }
    Ok((many - few) as f64 / (MANY - FEW) as f64)
}

/// When this process is a child that [`per_call_in_child`] started: the configuration and how
/// many calls to make, one after the other, before exiting.
pub(crate) fn child() -> Option<(String, u64)> {
    let value = std::env::var(ENV).ok()?;
    let (configuration, calls) = value.rsplit_once(':')?;
    Some((configuration.to_string(), calls.parse().ok()?))
}

/// Instructions per call of `configuration`: this binary re-run under callgrind, where
/// [`child`] tells it what to call and how often.
pub(crate) fn per_call_in_child(configuration: &str) -> Result<f64, String> {
    let total = |calls: u64| -> Result<u64, String> {
        let output = command()?
            .env(ENV, format!("{configuration}:{calls}"))
            .output()
            .map_err(|e| format!("cannot run valgrind: {e}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(format!(
                "{configuration} with {calls} calls under callgrind: {}; stderr:\n{stderr}",
                output.status
            ));
        }
        collected(&stderr)
    };
    per_call(total(FEW)?, total(MANY)?)
}

/// Prints the instructions per `what` of each labelled configuration, then `ratio` (a label
/// and its value computed from the counts, in order) against `target`: met when the ratio is at
/// least `target` if `at_least`, at most otherwise. Prints why instead when a count failed.
pub(crate) fn print(
    what: &str,
    counts: &[(&str, Result<f64, String>)],
    ratio: (&str, fn(&[f64]) -> f64),
    target: f64,
    at_least: bool,
) {
    println!("instructions per {what} under callgrind ({FEW} vs {MANY} sequential calls):");
    let mut values = Vec::with_capacity(counts.len());
    for (label, count) in counts {
        match count {
            Ok(count) => {
                println!("  {label}: {count:.0}");
                values.push(*count);
            }
            Err(why) => {
                println!("  skipped: {why}");
                return;
            }
        }
    }
    let (name, compute) = ratio;
    let value = compute(&values);
    let met = if at_least {
        value >= target
    } else {
        value <= target
    };
    println!(
        "  ratio {name} {value:.3} (target {} {target}: {})",
        if at_least { ">=" } else { "<=" },
        if met { "met" } else { "MISSED" }
    );
}
