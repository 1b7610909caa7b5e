//! A `skiff node-sim` process for process tests, killed (by its PID) when dropped.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::skiff_bin;

pub struct NodeSim {
    child: Child,
    log_path: PathBuf,
}

impl NodeSim {
    /// `skiff node-sim --kubeconfig <kubeconfig> <args>`, logging to `<dir>/node-sim.log`.
    pub fn start(dir: &Path, kubeconfig: &Path, args: &[&OsStr]) -> NodeSim {
        let log_path = dir.join("node-sim.log");
        let log = std::fs::File::create(&log_path).expect("log");
        let child = Command::new(skiff_bin())
            .arg("node-sim")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env("SKIFF_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn skiff node-sim");
        NodeSim { child, log_path }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for NodeSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
