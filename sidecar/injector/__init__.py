"""The mutating admission webhook that adds the sidecar to pods that opt in (``llm-sidecar injector``).

Pure parts, testable without a cluster (hashicorp/vault-k8s's split): ``template`` (what the Helm chart
rendered: the container, its volumes and pod metadata), ``annotations`` (a pod's per-pod choices),
``patch`` (pod + template + choices → JSON Patch) and ``review`` (AdmissionReview in → AdmissionReview
out). ``server`` is the aiohttp HTTPS server around them.
"""
