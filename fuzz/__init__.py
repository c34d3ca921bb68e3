"""Coverage-guided fuzz targets (atheris) and the harness the tests share with them."""
