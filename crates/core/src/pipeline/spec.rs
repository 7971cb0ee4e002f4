//! A pipeline as submitted, and the check of its shape: each problem a 400 naming it.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{MAX_COUNT, MAX_EVALS, MAX_STEPS, MAX_STEP_NAME};
use crate::error::{Error, Result};
use crate::model::Priority;

/// One step as submitted (validated field by field by the API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    pub name: String,
    pub size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

fn one() -> u32 {
    1
}

impl StepSpec {
    pub fn new(name: &str, size: u32) -> StepSpec {
        StepSpec {
            name: name.to_owned(),
            size,
            dataset: None,
            payload: None,
            priority: Priority::DEFAULT,
            count: 1,
            after: Vec::new(),
        }
    }

    pub fn after(mut self, names: &[&str]) -> StepSpec {
        self.after = names.iter().map(|n| n.to_string()).collect();
        self
    }

    pub fn count(mut self, n: u32) -> StepSpec {
        self.count = n;
        self
    }
}

/// A pipeline as submitted.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Spec {
    pub steps: Vec<StepSpec>,
}

fn invalid(code: &'static str, message: String) -> Error {
    Error::invalid(code, message)
}

impl Spec {
    /// Everything about the shape that can be wrong, each with a 400 that names it: no
    /// steps, too many, a bad or duplicate name, a count out of range, an `after` that
    /// names no step (or the step itself), a cycle.
    pub fn check(&self) -> Result<()> {
        if self.steps.is_empty() {
            return Err(invalid("empty_pipeline", "a pipeline needs at least one step".into()));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(invalid(
                "too_many_steps",
                format!("a pipeline has at most {MAX_STEPS} steps, got {}", self.steps.len()),
            ));
        }
        let mut names = HashSet::new();
        let mut evals = 0u32;
        for s in &self.steps {
            let ok = !s.name.is_empty()
                && s.name.len() <= MAX_STEP_NAME
                && s.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !ok {
                return Err(invalid(
                    "invalid_step_name",
                    format!("step name {:?}: 1–{MAX_STEP_NAME} of A–Z a–z 0–9 - _ .", s.name),
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err(invalid("duplicate_step", format!("step {:?} appears twice", s.name)));
            }
            if s.count == 0 || s.count > MAX_COUNT {
                return Err(invalid(
                    "invalid_count",
                    format!("step {:?}: count must be between 1 and {MAX_COUNT}, got {}", s.name, s.count),
                ));
            }
            evals += s.count;
        }
        if evals > MAX_EVALS {
            return Err(invalid(
                "too_many_evals",
                format!("a pipeline makes at most {MAX_EVALS} evals (counts together), got {evals}"),
            ));
        }
        for s in &self.steps {
            for a in &s.after {
                if a == &s.name {
                    return Err(invalid("cycle", format!("step {:?} waits for itself", s.name)));
                }
                if !names.contains(a.as_str()) {
                    return Err(invalid(
                        "unknown_step",
                        format!("step {:?} waits for {a:?}, which is no step", s.name),
                    ));
                }
            }
        }
        match self.cycle() {
            Some(c) => Err(invalid("cycle", format!("steps wait for each other in a cycle: {}", c.join(" → ")))),
            None => Ok(()),
        }
    }

    /// A cycle of step names (first repeated at the end), if there is one.
    fn cycle(&self) -> Option<Vec<String>> {
        let index: HashMap<&str, usize> = self.steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        // 0 unvisited, 1 on the current path, 2 done. Iterative: 1,000 steps deep is
        // deeper than a thread's stack should be asked to go.
        let mut mark = vec![0u8; self.steps.len()];
        for root in 0..self.steps.len() {
            if mark[root] != 0 {
                continue;
            }
            let mut path: Vec<(usize, usize)> = vec![(root, 0)];
            mark[root] = 1;
            while let Some(top) = path.last_mut() {
                let (node, next) = *top;
                let deps = &self.steps[node].after;
                if next < deps.len() {
                    top.1 += 1;
                    let dep = index.get(deps[next].as_str()).copied().unwrap_or(node);
                    match mark[dep] {
                        0 => {
                            mark[dep] = 1;
                            path.push((dep, 0));
                        }
                        1 => {
                            let from = path.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                            let mut names: Vec<String> =
                                path[from..].iter().map(|(n, _)| self.steps[*n].name.clone()).collect();
                            names.push(self.steps[dep].name.clone());
                            return Some(names);
                        }
                        _ => {}
                    }
                } else {
                    mark[node] = 2;
                    path.pop();
                }
            }
        }
        None
    }
}
