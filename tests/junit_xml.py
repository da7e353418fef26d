"""JUnit XML as plugin.py writes it, for tests that read results back without a pytest run."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from pytest_madengine.results.report import junit_properties, metrics_block
from pytest_madengine.results.result import FAILURE, ModelResult


def junit_xml(results: list[ModelResult], family: str) -> str:
    """What plugin.py writes for these results, in either form."""
    root = ET.Element("testsuites")
    suite = ET.SubElement(root, "testsuite", name="pytest", hostname="host1")
    suite_props = ET.SubElement(suite, "properties")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname="models.json", name=r.model)
        props = junit_properties(r)
        if family == "xunit1":
            el = ET.SubElement(case, "properties")
            for k, v in props:
                ET.SubElement(el, "property", name=k, value=v)
        else:
            for k, v in props:
                ET.SubElement(suite_props, "property", name=f"models.json::{r.model}::{k}", value=v)
            ET.SubElement(case, "system-out").text = metrics_block(props)
        if r.status == FAILURE:
            ET.SubElement(case, "failure", message=r.reason)
    return ET.tostring(root, encoding="unicode")
