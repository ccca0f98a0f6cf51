//! A batch run again after its commit (its worker died before reporting, or a lease expired
//! while it was still running) is recognised as done, even when a check reads the table: the
//! batch's own rows must not make `unique` against the table hold it.

use sluice_core::BatchOutcome;
use sluice_engine::Pipeline;
use sluice_engine::spec::SpecFile;

const SPEC: &str = "pipeline: rerun
source:
  files: in/*.csv
  columns: {id: int64, amount: float64}
  settle: 0s
transform: SELECT id, amount FROM input
sink:
  delta: out
  key: [id]
checks:
  - unique: {columns: [id]}
";

async fn pipeline(dir: &std::path::Path) -> Pipeline {
    std::fs::write(dir.join("p.yaml"), SPEC).unwrap();
    let spec = SpecFile::load(&dir.join("p.yaml")).unwrap();
    Pipeline::compile(&spec, 1).await.unwrap()
}

#[tokio::test]
async fn a_committed_batch_run_again_is_already_committed_and_new_duplicates_are_held() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("in")).unwrap();
    std::fs::write(dir.path().join("in/a.csv"), "id,amount\n1,1\n2,2\n3,3\n").unwrap();
    let p = pipeline(dir.path()).await;
    let files = p.discover().unwrap();
    let (id, slice) = p.batches_of(&files[0]).unwrap().remove(0);
    let first = p.run_batch(&id, &slice).await.unwrap();
    assert_eq!(first.outcome, BatchOutcome::Committed);
    let again = p.run_batch(&id, &slice).await.unwrap();
    assert_eq!(again.outcome, BatchOutcome::AlreadyCommitted);

    // A later file repeating id 3 is held, and nothing of it is published.
    std::fs::write(dir.path().join("in/b.csv"), "id,amount\n3,30\n4,4\n").unwrap();
    let b = p
        .discover()
        .unwrap()
        .into_iter()
        .find(|f| f.path.ends_with("b.csv"))
        .unwrap();
    let (id, slice) = p.batches_of(&b).unwrap().remove(0);
    let err = p.run_batch(&id, &slice).await.unwrap_err();
    assert!(err.quarantine, "{err}");
    assert!(err.message.contains("unique(id)"), "{err}");
    let rows: usize = p
        .sink()
        .read_all()
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 3);
}
