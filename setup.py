"""Installs ``model_cards/`` (the card templates, at the top of the repository) as the package
``mona_peft.model_cards``: a package-dir mapping, which pyproject's ``packages.find`` cannot express."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["mona_peft*"]), "mona_peft.model_cards"],
    package_dir={"mona_peft.model_cards": "model_cards"},
)
