{{/*
The sidecar, for inclusion in any pod spec. Each template takes the root context ($) of this chart,
or of an application chart that lists llm-sidecar as a dependency (its values under "llm-sidecar").

  spec:
    template:
      metadata:
        labels:      {{- include "llm-sidecar.podLabels" $ | nindent 8 }}
        annotations: {{- include "llm-sidecar.podAnnotations" $ | nindent 8 }}
      spec:
        terminationGracePeriodSeconds: {{ include "llm-sidecar.terminationGracePeriodSeconds" $ }}
        initContainers: {{- include "llm-sidecar.initContainers" $ | nindent 8 }}   # native form
        containers:
          - name: app ...                                                              # your app
          {{- include "llm-sidecar.containers" $ | nindent 10 }}                       # classic form
        volumes: {{- include "llm-sidecar.volumes" $ | nindent 8 }}

"llm-sidecar.container" renders the one container entry (a list item) in the form sidecar.form asks
for; initContainers/containers render it only where that form belongs, so both lines can stay.
*/}}

{{- define "llm-sidecar.container" -}}
{{- $v := include "llm-sidecar.values" . | fromYaml -}}
{{- $s := $v.sidecar -}}
- name: llm-sidecar
  image: {{ include "llm-sidecar.image" . }}
  imagePullPolicy: {{ $s.image.pullPolicy }}
  {{- if eq $s.form "native" }}
  # A native sidecar: started before, and stopped after, the app containers.
  restartPolicy: Always
  {{- end }}
  args:
    - --config
    - {{ printf "%s/config.yaml" $s.configMountPath }}
    - --host
    - {{ $s.host | quote }}
    - --port
    - {{ $s.port | quote }}
    - --admin-host
    - {{ $s.adminHost | quote }}
    - --admin-port
    - {{ $s.adminPort | quote }}
    {{- range $s.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  ports:
    - name: sidecar-admin
      containerPort: {{ $s.adminPort }}
      protocol: TCP
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    - name: TMPDIR
      value: /tmp
    - name: OTEL_SERVICE_NAME
      value: {{ $s.otelServiceName | quote }}
    - name: OTEL_RESOURCE_ATTRIBUTES
      value: "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"
    {{- if $v.jaeger.enabled }}
    - name: OTEL_EXPORTER_OTLP_ENDPOINT
      value: {{ printf "http://%s:4317" (include "llm-sidecar.jaegerService" .) | quote }}
    - name: OTEL_EXPORTER_OTLP_PROTOCOL
      value: grpc
    {{- end }}
    {{- with $s.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  startupProbe:
    httpGet:
      path: /readyz
      port: sidecar-admin
    periodSeconds: {{ $s.probes.startup.periodSeconds }}
    failureThreshold: {{ $s.probes.startup.failureThreshold }}
    timeoutSeconds: {{ $s.probes.startup.timeoutSeconds }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: sidecar-admin
    periodSeconds: {{ $s.probes.readiness.periodSeconds }}
    failureThreshold: {{ $s.probes.readiness.failureThreshold }}
    timeoutSeconds: {{ $s.probes.readiness.timeoutSeconds }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: sidecar-admin
    periodSeconds: {{ $s.probes.liveness.periodSeconds }}
    failureThreshold: {{ $s.probes.liveness.failureThreshold }}
    timeoutSeconds: {{ $s.probes.liveness.timeoutSeconds }}
  lifecycle:
    preStop:
      # Let in-flight streams finish before SIGTERM; the sidecar then drains what is left.
      exec:
        command: ["sleep", {{ $s.preStopSleepSeconds | quote }}]
  resources:
    {{- toYaml $s.resources | nindent 4 }}
  securityContext:
    {{- toYaml $s.securityContext | nindent 4 }}
  volumeMounts:
    - name: llm-sidecar-config
      mountPath: {{ $s.configMountPath }}
      readOnly: true
    {{- if $v.providerKeys.files }}
    - name: llm-sidecar-keys
      mountPath: {{ $v.providerKeys.mountPath }}
      readOnly: true
    {{- end }}
    - name: llm-sidecar-tmp
      mountPath: /tmp
{{- end -}}

{{- define "llm-sidecar.initContainers" -}}
{{- $v := include "llm-sidecar.values" . | fromYaml -}}
{{- if eq $v.sidecar.form "native" }}{{ include "llm-sidecar.container" . }}{{ end -}}
{{- end -}}

{{- define "llm-sidecar.containers" -}}
{{- $v := include "llm-sidecar.values" . | fromYaml -}}
{{- if eq $v.sidecar.form "classic" }}{{ include "llm-sidecar.container" . }}{{ end -}}
{{- end -}}

{{/* The volumes the sidecar mounts: its config, the provider keys as files, and /tmp. */}}
{{- define "llm-sidecar.volumes" -}}
{{- $v := include "llm-sidecar.values" . | fromYaml -}}
- name: llm-sidecar-config
  configMap:
    name: {{ printf "%s-config" (include "llm-sidecar.fullname" .) }}
{{- if $v.providerKeys.files }}
- name: llm-sidecar-keys
  projected:
    # Only this container mounts the keys; 0444 needs no fsGroup on the pod.
    defaultMode: 0444
    sources:
      {{- range $v.providerKeys.files }}
      - secret:
          name: {{ .secretName }}
          optional: {{ .optional | default false }}
          items:
            - key: {{ .secretKey }}
              path: {{ .name }}
      {{- end }}
{{- end }}
- name: llm-sidecar-tmp
  emptyDir:
    sizeLimit: {{ $v.sidecar.tmpSizeLimit }}
{{- end -}}

{{/* Pod labels: PodMonitor selects pods carrying the sidecar by llm-sidecar/enabled. */}}
{{- define "llm-sidecar.podLabels" -}}
llm-sidecar/enabled: "true"
{{- end -}}

{{/* Pod annotations: config checksum (a config change rolls the pods) and Prometheus discovery. */}}
{{- define "llm-sidecar.podAnnotations" -}}
{{- $v := include "llm-sidecar.values" . | fromYaml -}}
checksum/llm-sidecar-config: {{ include "llm-sidecar.config" . | sha256sum }}
{{- if $v.sidecar.prometheusAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ $v.sidecar.adminPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{- define "llm-sidecar.terminationGracePeriodSeconds" -}}
{{- $v := include "llm-sidecar.values" . | fromYaml -}}
{{- $v.sidecar.terminationGracePeriodSeconds -}}
{{- end -}}

{{/* A pod securityContext that suits the sidecar (optional: the container sets its own). */}}
{{- define "llm-sidecar.podSecurityContext" -}}
{{- $v := include "llm-sidecar.values" . | fromYaml -}}
fsGroup: {{ $v.sidecar.securityContext.runAsGroup | default 10001 }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The injection template: everything above, rendered once for the injector (templates/injector.yaml), so an
injected pod gets exactly what an application chart that includes these templates gets.
*/}}
{{- define "llm-sidecar.injectionTemplate" -}}
{{- $v := include "llm-sidecar.values" . | fromYaml -}}
form: {{ $v.sidecar.form }}
apiPort: {{ $v.sidecar.port }}
terminationGracePeriodSeconds: {{ include "llm-sidecar.terminationGracePeriodSeconds" . }}
podLabels:
  {{- include "llm-sidecar.podLabels" . | nindent 2 }}
podAnnotations:
  {{- include "llm-sidecar.podAnnotations" . | nindent 2 }}
containers:
  {{- include "llm-sidecar.container" . | nindent 2 }}
volumes:
  {{- include "llm-sidecar.volumes" . | nindent 2 }}
{{- end -}}
