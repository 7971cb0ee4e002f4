//! Pipelines in memory: the shape check, step ids, and `advance` over eval statuses.

use std::collections::HashSet;

use proptest::prelude::*;

use super::*;

fn spec(steps: Vec<StepSpec>) -> Spec {
    Spec { steps }
}

fn code(r: Result<()>) -> String {
    match r {
        Err(Error::Invalid { code, message }) => {
            assert!(!message.is_empty());
            code.to_string()
        }
        other => panic!("expected a 400, got {other:?}"),
    }
}

fn message(r: Result<()>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(()) => panic!("accepted"),
    }
}

#[test]
fn a_good_spec_passes() {
    let s = spec(vec![
        StepSpec::new("backup", 1),
        StepSpec::new("transfer", 2).after(&["backup"]).count(10),
        StepSpec::new("notify", 1).after(&["transfer", "backup"]),
    ]);
    s.check().unwrap();
}

#[test]
fn each_bad_shape_is_a_400_naming_it() {
    assert_eq!(code(spec(vec![]).check()), "empty_pipeline");
    let many = spec((0..=MAX_STEPS).map(|i| StepSpec::new(&format!("s{i}"), 1)).collect());
    assert_eq!(code(many.check()), "too_many_steps");
    assert_eq!(code(spec(vec![StepSpec::new("a", 1), StepSpec::new("a", 1)]).check()), "duplicate_step");
    assert!(message(spec(vec![StepSpec::new("a", 1), StepSpec::new("a", 1)]).check()).contains("\"a\""));
    assert_eq!(code(spec(vec![StepSpec::new("a b", 1)]).check()), "invalid_step_name");
    assert_eq!(code(spec(vec![StepSpec::new("", 1)]).check()), "invalid_step_name");
    assert_eq!(code(spec(vec![StepSpec::new("a", 1).count(0)]).check()), "invalid_count");
    assert_eq!(code(spec(vec![StepSpec::new("a", 1).count(MAX_COUNT + 1)]).check()), "invalid_count");
    let big = spec((0..11).map(|i| StepSpec::new(&format!("s{i}"), 1).count(MAX_COUNT)).collect());
    assert_eq!(code(big.check()), "too_many_evals");
    let unknown = spec(vec![StepSpec::new("a", 1).after(&["zz"])]);
    assert_eq!(code(unknown.clone().check()), "unknown_step");
    assert!(message(unknown.check()).contains("zz"));
    assert_eq!(code(spec(vec![StepSpec::new("a", 1).after(&["a"])]).check()), "cycle");
    let cyc = spec(vec![
        StepSpec::new("a", 1).after(&["c"]),
        StepSpec::new("b", 1).after(&["a"]),
        StepSpec::new("c", 1).after(&["b"]),
        StepSpec::new("d", 1),
    ]);
    assert_eq!(code(cyc.clone().check()), "cycle");
    let m = message(cyc.check());
    assert!(m.contains("a → c → b → a"), "{m}");
}

#[test]
fn a_chain_of_max_steps_is_checked_without_recursion() {
    let mut steps = vec![StepSpec::new("s0", 1)];
    for i in 1..MAX_STEPS {
        steps.push(StepSpec::new(&format!("s{i}"), 1).after(&[&format!("s{}", i - 1)]));
    }
    spec(steps.clone()).check().unwrap();
    steps[0].after = vec![format!("s{}", MAX_STEPS - 1)];
    assert_eq!(code(spec(steps).check()), "cycle");
}

fn pipeline(steps: Vec<StepSpec>) -> Pipeline {
    let s = spec(steps);
    s.check().unwrap();
    Pipeline::new(PoolId::generate(), s, None, 0)
}

/// Applies `a` as the service would.
fn apply(p: &mut Pipeline, a: &Advance) {
    for i in &a.start {
        p.states[*i] = StepState::Started;
    }
    for i in &a.skip {
        p.states[*i] = StepState::Skipped;
    }
    if let Some(s) = a.status {
        p.status = s;
    }
}

fn set(evals: &mut HashMap<EvalId, EvalStatus>, p: &Pipeline, step: usize, st: EvalStatus) {
    for id in p.eval_ids(step) {
        evals.insert(id, st);
    }
}

#[test]
fn steps_start_when_their_dependencies_complete() {
    let mut p = pipeline(vec![
        StepSpec::new("a", 1),
        StepSpec::new("b", 1).after(&["a"]).count(3),
        StepSpec::new("c", 1),
        StepSpec::new("d", 1).after(&["b", "c"]),
    ]);
    let mut evals = HashMap::new();
    let a = advance(&p, &evals);
    assert_eq!(a.start, vec![0, 2], "no `after`: at once");
    apply(&mut p, &a);
    // Started but not written yet: running, nothing more starts.
    assert_eq!(p.step_statuses(&evals)[0], StepStatus::Running);
    assert!(advance(&p, &evals).is_empty());
    set(&mut evals, &p, 0, EvalStatus::Complete);
    let a = advance(&p, &evals);
    assert_eq!(a.start, vec![1]);
    apply(&mut p, &a);
    assert_eq!(p.eval_ids(1).len(), 3);
    // Two of b's three: d still waits (for all of b, and for c).
    let b = p.eval_ids(1);
    evals.insert(b[0].clone(), EvalStatus::Complete);
    evals.insert(b[1].clone(), EvalStatus::Complete);
    evals.insert(b[2].clone(), EvalStatus::Placed);
    set(&mut evals, &p, 2, EvalStatus::Complete);
    assert!(advance(&p, &evals).is_empty());
    evals.insert(b[2].clone(), EvalStatus::Complete);
    let a = advance(&p, &evals);
    assert_eq!(a.start, vec![3]);
    apply(&mut p, &a);
    set(&mut evals, &p, 3, EvalStatus::Complete);
    let a = advance(&p, &evals);
    assert_eq!(a, Advance { start: vec![], skip: vec![], status: Some(PipelineStatus::Complete) });
    apply(&mut p, &a);
    assert!(advance(&p, &evals).is_empty(), "a complete pipeline stays so");
}

#[test]
fn a_dead_step_fails_the_pipeline_and_skips_what_has_not_started() {
    let mut p = pipeline(vec![
        StepSpec::new("a", 1),
        StepSpec::new("slow", 1),
        StepSpec::new("b", 1).after(&["a"]),
        StepSpec::new("c", 1).after(&["b"]),
    ]);
    let mut evals = HashMap::new();
    let first = advance(&p, &evals);
    apply(&mut p, &first);
    set(&mut evals, &p, 0, EvalStatus::Dead);
    set(&mut evals, &p, 1, EvalStatus::Placed);
    let a = advance(&p, &evals);
    assert_eq!((a.skip.clone(), a.status), (vec![2, 3], Some(PipelineStatus::Failed)));
    apply(&mut p, &a);
    let st = p.step_statuses(&evals);
    assert_eq!(st, vec![StepStatus::Failed, StepStatus::Running, StepStatus::Skipped, StepStatus::Skipped]);
    // The running step finishes normally; nothing else starts, the status stays failed.
    set(&mut evals, &p, 1, EvalStatus::Complete);
    assert!(advance(&p, &evals).is_empty());
}

#[test]
fn a_cancelled_eval_fails_its_step_and_a_cancelled_pipeline_skips_the_rest() {
    let mut p = pipeline(vec![StepSpec::new("a", 1).count(2), StepSpec::new("b", 1).after(&["a"])]);
    let mut evals = HashMap::new();
    let first = advance(&p, &evals);
    apply(&mut p, &first);
    evals.insert(p.eval_ids(0)[1].clone(), EvalStatus::Cancelled);
    assert_eq!(p.step_statuses(&evals)[0], StepStatus::Cancelled);
    assert_eq!(advance(&p, &evals).status, Some(PipelineStatus::Failed));

    let mut q = pipeline(vec![StepSpec::new("a", 1), StepSpec::new("b", 1).after(&["a"])]);
    let mut evals = HashMap::new();
    let first = advance(&q, &evals);
    apply(&mut q, &first);
    q.status = PipelineStatus::Cancelled;
    set(&mut evals, &q, 0, EvalStatus::Complete);
    let a = advance(&q, &evals);
    assert_eq!((a.start.clone(), a.skip.clone(), a.status), (vec![], vec![1], None));
}

#[test]
fn each_step_has_its_own_ids_fixed_at_acceptance() {
    let p = pipeline(vec![StepSpec::new("a", 1).count(3), StepSpec::new("b", 1).count(2), StepSpec::new("c", 1)]);
    let all: Vec<EvalId> = (0..3).flat_map(|i| p.eval_ids(i)).collect();
    assert_eq!(all.len(), 6);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 6);
    assert_eq!(p.eval_ids(1), p.eval_ids(1), "the same every time");
    assert_eq!(all[0], p.first_eval);
}

#[test]
fn inputs_map_each_dependency_to_its_outputs() {
    let p = pipeline(vec![
        StepSpec::new("one", 1),
        StepSpec::new("fan", 1).count(3),
        StepSpec::new("sink", 1).after(&["one", "fan"]),
    ]);
    let mut outputs = HashMap::new();
    outputs.insert(p.eval_ids(0)[0].clone(), Some("x".to_string()));
    let fan = p.eval_ids(1);
    outputs.insert(fan[0].clone(), Some("f0".to_string()));
    outputs.insert(fan[1].clone(), None);
    outputs.insert(fan[2].clone(), Some("f2".to_string()));
    let v = inputs(&p, 2, &outputs).unwrap();
    assert_eq!(v, serde_json::json!({"one": "x", "fan": ["f0", null, "f2"]}));
    assert_eq!(inputs(&p, 0, &outputs).unwrap(), serde_json::json!({}));
    let big = "y".repeat(MAX_INPUTS_BYTES);
    outputs.insert(p.eval_ids(0)[0].clone(), Some(big));
    assert!(matches!(inputs(&p, 2, &outputs), Err(Error::Invalid { code: "inputs_too_large", .. })));
}

/// A random DAG: each step may wait for earlier ones only.
fn dag() -> impl Strategy<Value = Vec<StepSpec>> {
    (1usize..12).prop_flat_map(|n| {
        proptest::collection::vec((proptest::collection::vec(any::<bool>(), n), 1u32..4), n).prop_map(move |rows| {
            rows.into_iter()
                .enumerate()
                .map(|(i, (deps, count))| {
                    let after: Vec<String> = (0..i).filter(|j| deps[*j]).map(|j| format!("s{j}")).collect();
                    StepSpec { after, ..StepSpec::new(&format!("s{i}"), 1).count(count) }
                })
                .collect()
        })
    })
}

proptest! {
    /// Completing evals in any order: no step starts before all its dependencies are
    /// complete, each starts once, and the pipeline ends complete.
    #[test]
    fn advance_respects_dependencies(steps in dag(), seed in any::<u64>()) {
        let mut p = pipeline(steps);
        let mut evals = HashMap::new();
        let mut started = vec![0; p.steps.len()];
        let mut rng = seed;
        for _ in 0..10_000 {
            let a = advance(&p, &evals);
            for i in &a.start {
                let st = p.step_statuses(&evals);
                for d in &p.steps[*i].after {
                    let j = p.steps.iter().position(|s| &s.name == d).unwrap();
                    prop_assert_eq!(st[j], StepStatus::Complete);
                }
                started[*i] += 1;
            }
            prop_assert!(a.skip.is_empty());
            apply(&mut p, &a);
            if p.status == PipelineStatus::Complete {
                break;
            }
            // Complete one running eval, picked pseudo-randomly.
            let running: Vec<EvalId> =
                p.started_evals().into_iter().map(|(_, id)| id).filter(|id| !evals.contains_key(id)).collect();
            prop_assert!(!running.is_empty(), "stuck: {:?}", p.states);
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let pick = running[(rng >> 33) as usize % running.len()].clone();
            evals.insert(pick, EvalStatus::Complete);
        }
        prop_assert_eq!(p.status, PipelineStatus::Complete);
        prop_assert!(started.iter().all(|n| *n == 1), "{:?}", started);
    }
}
