"""KFP components: thin, typed wrappers around the sftlab core, one per stage or sweep step.

Every component is a lightweight Python component whose ``base_image`` is the sftlab image and
whose body imports ``sftlab`` itself, so the code that runs is the image's, locally (``kfp.local``
runs the body in a subprocess of this environment) and on a cluster alike. The image is a
compile-time choice, hence factories (``stage_components(image)``, ``sweep_components(image)``)
rather than module-level decorated functions.
"""

import os

from sftlab import __version__
from sftlab.spec.schema import DEFAULT_IMAGE, Spec


def image_for(spec: Spec | None) -> str:
    """The components' image: the spec's, else ``$SFTLAB_IMAGE``, else ``sftlab:VERSION`` in
    ``$SFTLAB_REGISTRY`` (the one registry ``images/build.sh`` pushes every image to; the Helm
    chart's ``sftlab-defaults`` ConfigMap carries it), else this release's image.

    Without a spec (the committed pipeline files) only the release image counts, so the files do
    not depend on who compiled them or where.
    """
    release = f"{DEFAULT_IMAGE}:{__version__}"
    if spec is None:
        return release
    registry = os.environ.get("SFTLAB_REGISTRY", "").strip().rstrip("/")
    in_registry = f"{registry}/{DEFAULT_IMAGE.rsplit('/', 1)[1]}:{__version__}" if registry else release
    return spec.pipeline.image or os.environ.get("SFTLAB_IMAGE") or in_registry
