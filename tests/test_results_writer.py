"""``rescom_dev.results.write_result``: every benchmark result carries its command, machine and load average."""

import json

from rescom_dev.machine import describe_machine
from rescom_dev.results import write_result


def test_result_files_carry_command_machine_and_load(tmp_path):
    machine = describe_machine()
    json_path, md_path = write_result(
        "probe", {"img_per_s": 12.5}, "| a |\n| --- |\n| 1 |", machine, tmp_path
    )
    record = json.loads(json_path.read_text())
    assert record["figures"] == {"img_per_s": 12.5} and record["command"].startswith("python ")
    assert record["machine"]["load_average_start"] == machine["load_average_start"]
    assert len(record["load_average_end"]) == 3 and record["machine"]["usable_cpus"] >= 1
    md = md_path.read_text()
    assert md.startswith("# probe\n") and record["command"] in md and md.rstrip().endswith("| 1 |")
    assert str(machine["load_average_start"]) in md
