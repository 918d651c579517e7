"""The same C4 graph for Dataflow: built and checked without submitting a job."""

import pytest

from t5forge.beam_jobs import c4, job

pytest.importorskip("apache_beam.runners.dataflow.internal.apiclient")
pytest.importorskip("google.cloud.dataflow_v1beta3")

DATAFLOW_FLAGS = [
    "--runner=DataflowRunner",
    "--project=my-project-123",
    "--region=us-central1",
    "--temp_location=gs://my-bucket/tmp",
    "--staging_location=gs://my-bucket/staging",
    "--dry_run=True",
]


def build_dataflow_job(paths, output_dir):
    import apache_beam as beam

    options = job.pipeline_options(DATAFLOW_FLAGS, workers=None)
    pipeline = beam.Pipeline(options=options)
    c4.build_c4(pipeline, paths, c4.C4Config(badwords={"en": ["bad"]}), output_dir)
    return pipeline.run().job  # dry run: the job is built, not submitted


def transform_names(dataflow_job):
    return {t.unique_name for t in dataflow_job.proto_pipeline.components.transforms.values()}


def test_dataflow_graph_builds_without_submitting():
    dataflow_job = build_dataflow_job(["gs://my-bucket/wet/a.warc.wet.gz"], "gs://my-bucket/out")
    names = transform_names(dataflow_job)
    for step in (
        "ReadWet",
        "LengthFilter",
        "UrlDedup/SelectNewest",
        "CleanPages",
        "LineDedup/PickLineOwner",
        "English",
        "Badwords",
        "Write/WriteShard",
    ):
        assert step in names
    # The line-dedup winner comes from a combiner, not a GroupByKey of all lines.
    assert "LineDedup/PickLineOwner/Combine" in names
    assert (
        dataflow_job.options.view_as(
            __import__("apache_beam").options.pipeline_options.StandardOptions
        ).runner
        == "DataflowRunner"
    )


def test_long_path_lists_are_staged_not_embedded(tmp_path):
    paths = [
        f"gs://commoncrawl/crawl-data/CC-MAIN-2019-18/segments/{i:06d}/wet/"
        f"CC-MAIN-20190418101243-20190418{i:06d}-00000.warc.wet.gz"
        for i in range(20000)
    ]
    dataflow_job = build_dataflow_job(paths, str(tmp_path))
    graph_bytes = len(dataflow_job.proto_pipeline.SerializeToString())
    assert graph_bytes < 500_000  # 20k embedded paths would be ~2.2 MB
    staged = (tmp_path / ".input-paths.txt").read_text().split()
    assert staged == paths


def test_local_runner_is_the_multiprocess_default():
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    options = job.pipeline_options([], workers=3)
    assert options.view_as(StandardOptions).runner == "DirectRunner"
    assert options.view_as(DirectOptions).direct_running_mode == "multi_processing"
    assert options.view_as(DirectOptions).direct_num_workers == 3
    flink = job.pipeline_options(["--runner=FlinkRunner", "--flink_master=host:8081"], workers=3)
    assert flink.view_as(StandardOptions).runner == "FlinkRunner"
    assert flink.get_all_options()["flink_master"] == "host:8081"


def test_mc4_graph_has_one_write_for_all_languages():
    import apache_beam as beam

    from t5forge.beam_jobs import mc4

    sizes = []
    for languages in (("de",), tuple(mc4.MC4_LANGUAGES)):
        options = job.pipeline_options(DATAFLOW_FLAGS, workers=None)
        pipeline = beam.Pipeline(options=options)
        mc4.build_mc4(
            pipeline,
            ["gs://my-bucket/wet/a.warc.wet.gz"],
            mc4.MC4Config(languages=languages, badwords={"de": ["x"]}),
            "gs://my-bucket/out",
        )
        dataflow_job = pipeline.run().job
        names = transform_names(dataflow_job)
        assert sum(1 for n in names if n.endswith("WriteShard")) == 1
        sizes.append(len(dataflow_job.proto_pipeline.SerializeToString()))
    # 107 languages cost (almost) nothing more than one: no branch per language.
    assert sizes[1] < sizes[0] + 5_000
    assert sizes[1] < 200_000
