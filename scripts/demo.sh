#!/usr/bin/env bash
# `make demo`: build the bundled sample, ingest it (DVC), run the whole pipeline through Airflow, then search it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export MMR_HOME=${MMR_HOME:-$PWD}
export MMR_DAGS_FOLDER=${MMR_DAGS_FOLDER:-$PWD/dags}  # this checkout's DAGs, wherever MMR_HOME points
start=$(date +%s)

echo "== 1/4 building the demo sample from images bundled in scikit-image / scikit-learn"
$BIN/mmr sample --out build/sample
echo "== 2/4 ingesting it as dataset 'demo' (copied to data/raw/demo, tracked by DVC)"
$BIN/mmr ingest build/sample/manifest.csv --name demo
echo "== 3/4 running the Airflow DAG mmr_pipeline (airflow dags test, SQLite metadata in var/airflow)"
mkdir -p "$MMR_HOME/var"
log="$MMR_HOME/var/demo-dag-test.log"
set +e  # the run's exit status, not grep's, decides
$BIN/mmr dag-test --dataset demo 2>&1 | tee "$log" | grep -E "mmretrieval|Marking task|ERROR|Traceback|DagRun Finished"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "mmr dag-test failed (exit $status); the whole log: $log" >&2
  exit "$status"
fi
$BIN/mmr info --dataset demo >/dev/null  # fails loudly if the pipeline did not publish

echo "== 4/4 searching the published collection"
echo "-- descriptions of the bundled photos written for this demo and never trained on (build/sample/queries.csv):"
mapfile -t queries < <(tail -n +2 build/sample/queries.csv | cut -d, -f1)
$BIN/mmr search "${queries[@]}" --dataset demo --k 3
echo "-- handwritten digits (a class name finds its class):"
$BIN/mmr search "a handwritten digit seven" "the number 3 written by hand" --dataset demo --k 5
$BIN/mmr search --image build/sample/images/chelsea.png --dataset demo --k 3
echo "-- video clips (generated moving digits; each hit says at which time in the clip the query matched best):"
$BIN/mmr search "a seven moving up" --dataset demo --k 3 --modality video

echo
$BIN/mmr info --dataset demo
cat <<EOT

Done in $(( $(date +%s) - start )) s. Where things live:
  MLflow store     ${MMR_MLFLOW_TRACKING_URI:-sqlite:///$MMR_HOME/var/mlflow.db}  (artifacts: $MMR_HOME/var/mlartifacts)
                   browse: $BIN/mlflow ui --backend-store-uri sqlite:///$MMR_HOME/var/mlflow.db
  Milvus Lite file ${MMR_MILVUS_URI:-$MMR_HOME/var/milvus.db}
  Airflow home     $MMR_HOME/var/airflow (SQLite)
  Reports          $MMR_HOME/data/reports/demo/ (evaluate.html, evaluate.json, rerank.json)
  Airflow run log  $log
  Raw data (DVC)   $MMR_HOME/data/raw/demo.dvc
EOT
