"""The rendered Deployment of deploy/kubernetes, as scripts/container-test plays it with podman 4.3.

    python tests/tools/kube_play.py RENDERED OUT --name NAME --port PORT --token-url URL

RENDERED is `kubectl kustomize`'s output. OUT gets its Deployment alone, changed only where podman 4.3 on this
kind of machine cannot play it as it is, and where the test must point it at the TikTok stand-in:

- metadata.name becomes NAME: podman names the pod after it, and two runs on one machine must not collide.
- Each `valueFrom.secretKeyRef` becomes a literal `value`, taken from this process's environment variable named
  like the Secret's key: the Secret is created apart, not rendered, and podman 4.3 cannot read a Secret's values
  even from the same file ("not valid JSON"). An optional one whose variable is unset is left out, as on a
  cluster whose Secret lacks that key.
- `ports` is dropped, and the probes' port becomes the number PORT: on the host network (there is no bridge
  here) podman refuses port mappings, and a probe's named port would then name nothing.
- The PORT variable becomes PORT: on the host network the container listens on this machine's ports, where 3333
  may be taken.
- TIKTOK_TOKEN_URL is added: the stand-in's token endpoint.

Everything else (image, securityContext, resources, volumes, probe paths, the other variables) is played as
rendered. Prints what the script needs of the rest, on one line: the image, terminationGracePeriodSeconds and
the preStop command.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import yaml


def play_copy(deployment: dict[str, Any], name: str, port: int, token_url: str) -> dict[str, Any]:
    """The Deployment as podman plays it here (the module's docstring says what changes and why)."""
    deployment["metadata"]["name"] = name
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container.pop("ports")
    for probe in ("readinessProbe", "livenessProbe"):
        container[probe]["httpGet"]["port"] = port
    env = []
    for variable in container["env"]:
        reference = variable.get("valueFrom", {}).get("secretKeyRef")
        if reference:
            value = os.environ.get(reference["key"])
            if value is None and reference.get("optional"):
                continue
            if value is None:
                raise SystemExit(f"kube_play: set {reference['key']}: the Deployment requires it from its Secret")
            variable = {"name": variable["name"], "value": value}
        if variable["name"] == "PORT":
            variable = {"name": "PORT", "value": str(port)}
        env.append(variable)
    container["env"] = [*env, {"name": "TIKTOK_TOKEN_URL", "value": token_url}]
    return deployment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rendered")
    parser.add_argument("out")
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-url", required=True)
    args = parser.parse_args()
    with open(args.rendered) as file:
        (deployment,) = [item for item in yaml.safe_load_all(file) if item["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    facts = [container["image"], str(pod["terminationGracePeriodSeconds"]), *pre_stop]
    with open(args.out, "w") as file:
        yaml.safe_dump(play_copy(deployment, args.name, args.port, args.token_url), file)
    print(" ".join(facts))


if __name__ == "__main__":
    sys.exit(main())
