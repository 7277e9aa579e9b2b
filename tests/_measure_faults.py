"""Scratch measurement (not a test of the suite): FAULT_RATES=0.02,0.05 pytest tests/_measure_faults.py -s"""
import os, json, time
import pyarrow.parquet as pq
from distetl.storage import Storage
from distetl.state.records import read_record
from test_s3_faults import s3, aws_env, bucket, run_with_faults, IDS_FLOW  # noqa: F401


def test_measure(s3, flow_file, prefect_api, tmp_path, monkeypatch):
    flow = flow_file(IDS_FLOW, name="faulty_flow.py")
    for rate in [float(r) for r in os.environ["FAULT_RATES"].split(",")]:
        name = f"m-{int(rate*100)}-{int(time.time())}"
        s3.create_bucket(name)
        out = run_with_faults(s3, name, flow, rate, seed=int(os.environ.get("SEED", "1")))
        r = out["report"]
        summary = {"rate": rate, "error": out["error"], "seconds": round(out["seconds"], 1),
                   "injected": out["injected"], "requests": out["requests"],
                   "keys": len(out["keys"]), "puts_200_per_key": dict(__import__("collections").Counter(out["puts"].values())),
                   "open_uploads": len(out["uploads"])}
        if r is not None:
            summary.update(ok=r.ok, written=r.written, skipped=getattr(r, "skipped", None), failed=len(r.failed),
                           errors=sorted({(f.error or "")[:160] for f in r.failed})[:5],
                           storage_retries=getattr(r, "storage_retries", None),
                           attempts=sum(x.attempts for x in r.results),
                           skipped_detail=[(x.key, x.worker, x.task_run_id, x.storage_retries, x.seconds) for x in r.results if x.status == "skipped"])
        bad = 0
        fs = Storage.for_url(out["output"], {"endpoint_url": s3.endpoint}).fs
        for k in out["keys"]:
            try:
                pq.read_metadata(f"{name}/{k}", filesystem=fs)
            except Exception:
                bad += 1
        summary["not_parquet"] = bad
        print("MEASURE", json.dumps(summary, default=str), flush=True)
        with open("/tmp/s3faults/measure.jsonl", "a") as f:
            f.write(json.dumps(summary, default=str) + "\n")
