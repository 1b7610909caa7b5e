//! The IO half: hands a [`Batch`] to `iptables-restore --noflush` (one atomic replacement per
//! table), makes sure the built-in chains jump into ours, and `--cleanup` removes all of it.
//! Behind [`RuleWriter`] so the sync loop can be tested without touching a kernel.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::iptables::{Batch, FILTER_BASE_CHAINS, JUMPS, NAT_BASE_CHAINS, SERVICE_CHAIN_PREFIXES};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// Where rules go.
pub trait RuleWriter: Send + Sync {
    /// Applies one batch.
    fn restore(&self, batch: &Batch) -> Result<(), ApplyError>;
    /// Makes sure the built-in chains jump into ours.
    fn ensure_jumps(&self) -> Result<(), ApplyError>;
    /// The per-Service chains already in the kernel (from an earlier run).
    fn existing_chains(&self) -> Result<BTreeSet<String>, ApplyError>;
}

/// The real one: the `iptables`, `iptables-save` and `iptables-restore` commands.
#[derive(Debug, Default)]
pub struct Iptables;

fn run(command: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ApplyError> {
    let line = format!("{command} {}", args.join(" "));
    let mut child = Command::new(command)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ApplyError::Spawn {
            command: line.clone(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| ApplyError::Spawn {
                command: line.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| ApplyError::Spawn {
            command: line.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ApplyError::Failed {
            command: line,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Splits a rule spec the way a shell would (double quotes group words).
fn words(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in spec.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

fn jump_args<'a>(table: &'a str, op: &'a str, chain: &'a str, spec: &[String]) -> Vec<String> {
    let mut args = vec![
        "-w".to_string(),
        "-t".into(),
        table.into(),
        op.into(),
        chain.into(),
    ];
    args.extend(spec.iter().cloned());
    args
}

/// The `KUBE-` chains of `table` in the kernel.
fn kube_chains(table: &str) -> Result<Vec<String>, ApplyError> {
    let saved = run("iptables-save", &["-t", table], None)?;
    Ok(saved
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.starts_with("KUBE-"))
        .map(str::to_string)
        .collect())
}

impl RuleWriter for Iptables {
    fn restore(&self, batch: &Batch) -> Result<(), ApplyError> {
        run("iptables-restore", &["-w", "--noflush"], Some(&batch.text)).map(|_| ())
    }

    fn ensure_jumps(&self) -> Result<(), ApplyError> {
        for (table, chain, spec) in JUMPS {
            let spec = words(spec);
            let check: Vec<String> = jump_args(table, "-C", chain, &spec);
            let check: Vec<&str> = check.iter().map(String::as_str).collect();
            if run("iptables", &check, None).is_err() {
                let insert = jump_args(table, "-I", chain, &spec);
                let insert: Vec<&str> = insert.iter().map(String::as_str).collect();
                run("iptables", &insert, None)?;
            }
        }
        Ok(())
    }

    fn existing_chains(&self) -> Result<BTreeSet<String>, ApplyError> {
        Ok(kube_chains("nat")?
            .into_iter()
            .filter(|c| SERVICE_CHAIN_PREFIXES.iter().any(|p| c.starts_with(p)))
            .collect())
    }
}

/// `--cleanup`: removes the jumps and every chain this proxy writes, in both tables. Returns
/// how many chains were deleted.
pub fn cleanup() -> Result<usize, ApplyError> {
    for (table, chain, spec) in JUMPS {
        let spec = words(spec);
        let delete = jump_args(table, "-D", chain, &spec);
        let delete: Vec<&str> = delete.iter().map(String::as_str).collect();
        while run("iptables", &delete, None).is_ok() {}
    }
    let mut deleted = 0;
    for (table, base) in [
        ("nat", &NAT_BASE_CHAINS[..]),
        ("filter", &FILTER_BASE_CHAINS[..]),
    ] {
        let ours: Vec<String> = kube_chains(table)?
            .into_iter()
            .filter(|c| {
                base.contains(&c.as_str())
                    || SERVICE_CHAIN_PREFIXES.iter().any(|p| c.starts_with(p))
            })
            .collect();
        if ours.is_empty() {
            continue;
        }
        let mut text = format!("*{table}\n");
        for chain in &ours {
            text.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for chain in &ours {
            text.push_str(&format!("-X {chain}\n"));
        }
        text.push_str("COMMIT\n");
        run("iptables-restore", &["-w", "--noflush"], Some(&text))?;
        deleted += ours.len();
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::words;

    #[test]
    fn rule_specs_split_like_a_shell() {
        assert_eq!(
            words("-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"),
            [
                "-m",
                "comment",
                "--comment",
                "kubernetes service portals",
                "-j",
                "KUBE-SERVICES"
            ]
        );
    }
}
