//! Human-readable tables for the admin commands (`--json` prints the API's JSON).

use lineup_client::{EvalView, PoolView, WorkerView};

/// The header and rows as aligned lines.
fn table_lines(header: &[&str], rows: Vec<Vec<String>>) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{:<w$}", c, w = widths[i])).collect();
        s.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    out
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    for l in table_lines(header, rows) {
        println!("{l}");
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

pub fn pools(ps: &[PoolView]) {
    print_table(
        &["POOL", "STRATEGY", "STATUS", "WORKERS", "CAPACITY", "FREE", "QUEUED", "ALLOCS", "LIMIT", "HEALTH"],
        ps.iter()
            .map(|p| {
                vec![
                    p.pool_id.clone(),
                    p.strategy.clone(),
                    p.status.clone(),
                    p.workers.to_string(),
                    p.capacity.to_string(),
                    p.free.to_string(),
                    p.queued.to_string(),
                    p.allocs.to_string(),
                    match (p.limit, p.max_running) {
                        (Some(l), Some(m)) => format!("{l}/{m}"),
                        (Some(l), None) => l.to_string(),
                        (None, _) => "-".into(),
                    },
                    p.health.as_ref().and_then(|h| h.get("level")).map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
    );
}

pub fn workers(ws: &[WorkerView]) {
    print_table(
        &["WORKER", "CAPACITY", "FREE", "LIVE"],
        ws.iter()
            .map(|w| vec![w.worker_id.clone(), w.capacity.to_string(), w.free.to_string(), w.live.to_string()])
            .collect(),
    );
}

pub fn evals(es: &[EvalView]) {
    print_table(
        &["EVAL", "STATUS", "SIZE", "DATASET", "ATTEMPTS", "WORKER", "EXIT", "REASON"],
        es.iter()
            .map(|e| {
                vec![
                    e.eval_id.clone(),
                    e.status.clone(),
                    e.size.to_string(),
                    opt(&e.dataset),
                    e.attempts.to_string(),
                    opt(&e.worker_id),
                    opt(&e.exit_code),
                    opt(&e.reason),
                ]
            })
            .collect(),
    );
}

pub fn eval_detail(e: &EvalView) {
    let rows = [
        ("eval", e.eval_id.clone()),
        ("pool", e.pool_id.clone()),
        ("status", e.status.clone()),
        ("size", e.size.to_string()),
        ("dataset", opt(&e.dataset)),
        ("attempts", e.attempts.to_string()),
        ("worker", opt(&e.worker_id)),
        ("alloc", opt(&e.alloc_id)),
        ("exit code", opt(&e.exit_code)),
        ("reason", opt(&e.reason)),
        ("created", e.created_at.clone()),
        ("updated", e.updated_at.clone()),
    ];
    for (k, v) in rows {
        println!("{k:<10} {v}");
    }
    if let Some(out) = &e.output {
        println!("output:\n{out}");
    }
}

/// A pipeline's steps as lines (for `pipeline show` and its live view).
pub fn pipeline_lines(p: &lineup_client::PipelineView) -> Vec<String> {
    let rows: Vec<Vec<String>> = p
        .steps
        .iter()
        .map(|s| {
            let after = if s.after.is_empty() { "-".to_string() } else { s.after.join(",") };
            vec![s.name.clone(), s.status.clone(), format!("{}/{}", s.eval_ids.len(), s.count), after]
        })
        .collect();
    let mut out = vec![format!("pipeline {} {}", p.pipeline_id, p.status)];
    if let Some(r) = &p.reason {
        out.push(format!("reason: {r}"));
    }
    out.extend(table_lines(&["STEP", "STATUS", "EVALS", "AFTER"], rows));
    out
}

pub fn pipeline(p: &lineup_client::PipelineView) {
    for l in pipeline_lines(p) {
        println!("{l}");
    }
}

pub fn pipelines(ps: &[lineup_client::PipelineView]) {
    print_table(
        &["PIPELINE", "STATUS", "STEPS", "COMPLETE"],
        ps.iter()
            .map(|p| {
                let done = p.steps.iter().filter(|s| s.status == "complete").count();
                vec![p.pipeline_id.clone(), p.status.clone(), p.steps.len().to_string(), done.to_string()]
            })
            .collect(),
    );
}
