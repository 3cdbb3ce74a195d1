"""Packaging beyond pyproject.toml: the wheel carries the top-level ``migrations/`` and ``templates/``.

They live at the top of the source tree (Alembic's and Flask's usual places); an installed wheel has no
source tree, so they go inside the package as ``tmsi/migrations`` and ``tmsi/templates``, where
``tmsi.app`` and ``tmsi db`` look when the source tree is not beside the package.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["tmsi*"]), "tmsi.migrations", "tmsi.templates"],
    package_dir={"tmsi.migrations": "migrations", "tmsi.templates": "templates"},
    package_data={
        "tmsi": ["data/*", "data/**/*", "web/static/**/*", "web/dashboard_static/**/*"],
        "tmsi.migrations": ["*.mako", "versions/*.py"],
        "tmsi.templates": ["**/*.html", "*.html"],
    },
)
