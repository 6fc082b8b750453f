{{/*
Names and labels. Every helper here and in _sidecar.tpl takes the root context of either this chart
or an application chart that depends on it; "llm-sidecar.values" finds the sidecar's values in both.
*/}}

{{/* The llm-sidecar values: .Values of this chart, or .Values.llm-sidecar of a parent chart. */}}
{{- define "llm-sidecar.values" -}}
{{- if hasKey .Values "llm-sidecar" -}}
{{- toYaml (index .Values "llm-sidecar") -}}
{{- else -}}
{{- toYaml .Values -}}
{{- end -}}
{{- end -}}

{{- define "llm-sidecar.name" -}}
{{- $v := include "llm-sidecar.values" . | fromYaml -}}
{{- default "llm-sidecar" $v.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The object name prefix. It does not use .Chart.Name, so an application chart that includes the
sidecar template computes the same ConfigMap name as this chart.
*/}}
{{- define "llm-sidecar.fullname" -}}
{{- $v := include "llm-sidecar.values" . | fromYaml -}}
{{- if $v.fullnameOverride -}}
{{- $v.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "llm-sidecar" $v.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "llm-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llm-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "llm-sidecar.labels" -}}
{{- $v := include "llm-sidecar.values" . | fromYaml -}}
helm.sh/chart: {{ include "llm-sidecar.chart" . }}
{{ include "llm-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llm-sidecar
{{- with $v.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component: call with (list $ "sglang"). */}}
{{- define "llm-sidecar.componentLabels" -}}
{{ include "llm-sidecar.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "llm-sidecar.componentSelector" -}}
{{ include "llm-sidecar.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "llm-sidecar.sglangService" -}}
{{- printf "%s-sglang" (include "llm-sidecar.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llm-sidecar.jaegerService" -}}
{{- printf "%s-jaeger" (include "llm-sidecar.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llm-sidecar.image" -}}
{{- $v := include "llm-sidecar.values" . | fromYaml -}}
{{- $img := $v.sidecar.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- $appVersion := .Chart.AppVersion -}}
{{- if ne .Chart.Name "llm-sidecar" -}}
{{- /* Included from an application chart: the default tag is the llm-sidecar subchart's appVersion. */ -}}
{{- $sub := index (default dict .Subcharts) "llm-sidecar" -}}
{{- $appVersion = "" -}}
{{- with $sub }}{{ $appVersion = .Chart.AppVersion }}{{ end -}}
{{- end -}}
{{- $tag := default $appVersion ($img.tag | toString) -}}
{{- if not $tag }}{{ fail "llm-sidecar: set sidecar.image.tag (or sidecar.image.digest)" }}{{ end -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The sidecar configuration file (DESIGN.md "Configuration"): model_list, router_settings and
sidecar_settings from values; with sglang.enabled a model_list entry for the shared SGLang Service.
*/}}
{{- define "llm-sidecar.config" -}}
{{- $v := include "llm-sidecar.values" . | fromYaml -}}
{{- $models := list -}}
{{- range $v.config.modelList }}{{ $models = append $models . }}{{ end -}}
{{- if $v.sglang.enabled -}}
{{- $served := default $v.sglang.modelPath $v.sglang.servedModelName -}}
{{- $service := include "llm-sidecar.sglangService" . -}}
{{- $params := dict "model" (printf "sglang/%s" $served) "api_base" (printf "http://%s:%d/v1" $service (int $v.sglang.port)) -}}
{{- if $v.sglang.replicaRouting -}}
{{- /* every replica's address from the headless Service: the sidecars choose among them (prefix- and load-aware) */ -}}
{{- $params = dict "model" (printf "sglang/%s" $served) "api_base" (printf "http://%s-headless:%d/v1" $service (int $v.sglang.port)) "replicas" "dns" -}}
{{- end -}}
{{- $params = merge $params (deepCopy (default dict $v.sglang.litellmParams)) -}}
{{- $models = append $models (dict "model_name" (default $served $v.sglang.modelName) "litellm_params" $params) -}}
{{- end -}}
{{- $cfg := dict "model_list" $models -}}
{{- with $v.config.routerSettings }}{{ $_ := set $cfg "router_settings" . }}{{ end -}}
{{- with $v.config.sidecarSettings }}{{ $_ := set $cfg "sidecar_settings" . }}{{ end -}}
{{- /*
Go writes small and large floats as 1e-07; YAML 1.1 readers such as PyYAML (the sidecar's) take that
for a string. Give such exponents a mantissa with a dot (1.0e-07) so they stay numbers.
*/ -}}
{{- regexReplaceAll "(?m)((?:^|:|-)\\s+-?[0-9]+)([eE][-+]?[0-9]+)$" (toYaml $cfg) "${1}.0${2}" -}}
{{- end -}}

{{/* ---- the injector (templates/injector.yaml, templates/injector-webhook.yaml) ---- */}}

{{- define "llm-sidecar.injectorName" -}}
{{- printf "%s-injector" (include "llm-sidecar.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llm-sidecar.injectorImage" -}}
{{- $v := include "llm-sidecar.values" . | fromYaml -}}
{{- if $v.injector.image.repository -}}
{{- printf "%s:%s" $v.injector.image.repository (default .Chart.AppVersion $v.injector.image.tag) -}}
{{- else -}}
{{- include "llm-sidecar.image" . -}}
{{- end -}}
{{- end -}}

{{/* helm or cert-manager: where the webhook's serving certificate comes from. */}}
{{- define "llm-sidecar.injectorTLSSource" -}}
{{- $v := include "llm-sidecar.values" . | fromYaml -}}
{{- $source := $v.injector.tls.source -}}
{{- if eq $source "auto" -}}
{{- $source = ternary "cert-manager" "helm" (.Capabilities.APIVersions.Has "cert-manager.io/v1") -}}
{{- end -}}
{{- $source -}}
{{- end -}}

{{/*
The Helm-made certificates: called with (list $ $existing), where $existing is the Secret read back with
lookup (empty on install, and offline). An existing Secret with all three keys is reused, so the
certificate and the webhook's caBundle stay the same across upgrades; otherwise a new CA signs a
certificate for the injector Service's DNS names. Returns YAML with base64 values: ca, cert, key.
*/}}
{{- define "llm-sidecar.injectorTLS" -}}
{{- $root := index . 0 -}}
{{- $existing := index . 1 -}}
{{- $data := dig "data" dict (default dict $existing) -}}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") -}}
ca: {{ index $data "ca.crt" }}
cert: {{ index $data "tls.crt" }}
key: {{ index $data "tls.key" }}
{{- else -}}
{{- $v := include "llm-sidecar.values" $root | fromYaml -}}
{{- $svc := include "llm-sidecar.injectorName" $root -}}
{{- $ns := $root.Release.Namespace -}}
{{- $days := int $v.injector.tls.validityDays -}}
{{- $ca := genCA (printf "%s-ca" $svc) $days -}}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- $cert := genSignedCert (printf "%s.%s.svc" $svc $ns) nil $names $days $ca -}}
ca: {{ $ca.Cert | b64enc }}
cert: {{ $cert.Cert | b64enc }}
key: {{ $cert.Key | b64enc }}
{{- end -}}
{{- end -}}
