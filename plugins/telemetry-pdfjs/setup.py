"""telemetry-pdfjs: pdf.js add-on histogram definitions for telemetry-core."""

from pathlib import Path

from setuptools import setup

setup(
    name="telemetry-pdfjs",
    version="1.0.0",
    description="telemetry-core plugin: the pdf.js viewer's add-on histograms (PDF_VIEWER_*)",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MPL-2.0",
    python_requires=">=3.11",
    py_modules=["telemetry_pdfjs"],
    install_requires=["telemetry-core"],
    entry_points={"telemetry": ["pdfjs = telemetry_pdfjs"]},
)
