from __future__ import annotations

import pytest

# Enough for kubernetes.config.load_kube_config; no cluster is ever contacted.
MINIMAL_KUBECONFIG = """
apiVersion: v1
kind: Config
current-context: fake-context
contexts:
  - context:
      cluster: fake-cluster
    name: fake-context
clusters:
  - cluster: {}
    name: fake-cluster
"""


@pytest.fixture
def kubeconfig_file(tmp_path):
    path = tmp_path / ".kube" / "config"
    path.parent.mkdir()
    path.write_text(MINIMAL_KUBECONFIG)
    return str(path)
