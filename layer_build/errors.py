"""What can go wrong while building or deploying; every message says what to do."""

from __future__ import annotations


class LayerBuildError(Exception):
    """Base of every build and deploy error; the CLIs print the message and exit 1."""


class BuildError(LayerBuildError):
    """The artifacts could not be built (sources, wheels, pip)."""


class SizeLimitError(BuildError):
    """An artifact is past a hard Lambda size limit."""


class DeployError(LayerBuildError):
    """The deployment could not be planned or carried out."""


class EnvFileError(DeployError):
    """The env file is missing or malformed, or holds a variable Lambda refuses."""


class MissingArtifactError(DeployError):
    """dist/ lacks what the deployment needs, or it changed since the build."""


class CredentialsError(DeployError):
    """boto3 found no credentials or no region."""
