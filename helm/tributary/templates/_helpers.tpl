{{/* Names and labels. */}}
{{- define "tributary.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "tributary.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tributary.labels" -}}
app.kubernetes.io/name: tributary
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
tributary.dev/region: {{ .Values.region | quote }}
tributary.dev/role: {{ .Values.role }}
{{- end -}}

{{/* The pod selector of one service (stable across upgrades). */}}
{{- define "tributary.selector" -}}
app.kubernetes.io/name: tributary
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/*
Every service: its name (the subcommand), where it runs, and how it scales.
scope: regional (primary/secondary), central, any.
*/}}
{{- define "tributary.catalog" -}}
bronzeIngest: {name: bronze-ingest, scope: regional, stage: bronze}
silverTransform: {name: silver-transform, scope: regional, stage: silver}
goldAggregate: {name: gold-aggregate, scope: regional, stage: gold}
centralFederator: {name: central-federator, scope: central, stage: federator}
kafka2prom: {name: kafka2prom, scope: any, stage: kafka2prom}
logExporter: {name: log-exporter, scope: any, stage: log-exporter}
{{- end -}}

{{/* Whether a regional stage runs continuously here (the active side). */}}
{{- define "tributary.continuous" -}}
{{- if or (eq .Values.role "primary") .Values.active }}true{{ end -}}
{{- end -}}

{{/* The subcommand and its own flags. */}}
{{- define "tributary.args" -}}
{{- $v := .root.Values -}}
- {{ ternary "standalone" .name (eq .key "standby") }}
{{- if eq .key "bronzeIngest" }}
- --region
- {{ $v.region | quote }}
- --from
- {{ .svc.from }}
{{- else if or (eq .key "silverTransform") (eq .key "goldAggregate") }}
- --region
- {{ $v.region | quote }}
{{- else if eq .key "centralFederator" }}
{{- if $v.regions }}
- --region
- {{ join "," $v.regions | quote }}
{{- end }}
{{- else if eq .key "standby" }}
- --regions
- {{ $v.region | quote }}
- --stages
- bronze,silver,gold
- --trigger
- available-now
{{- else if eq .key "kafka2prom" }}
- --listen
- {{ printf "0.0.0.0:%v" $v.ports.exposed | quote }}
{{- end }}
- --grpc-addr
- {{ printf "0.0.0.0:%v" $v.ports.grpc | quote }}
- --admin-addr
- {{ printf "0.0.0.0:%v" $v.ports.admin | quote }}
{{- end -}}

{{- define "tributary.env" -}}
- name: TRIBUTARY_CONFIG
  value: /etc/tributary/tributary.toml
- name: POD_NAME
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
- name: TRIBUTARY__METRICS__INSTANCE
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
{{- if hasKey .svc "minBatchIntervalMs" }}
{{- /* A caught-up service waits this long before it looks for input again (server.min_batch_interval_ms). */}}
- name: TRIBUTARY__SERVER__MIN_BATCH_INTERVAL_MS
  value: {{ .svc.minBatchIntervalMs | quote }}
{{- end }}
{{- if .staticMembership }}
- name: TRIBUTARY__KAFKA__INSTANCE_ID
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
{{- end }}
{{- if and (eq .key "bronzeIngest") (gt (int (default 1 .svc.landingSlots)) 1) }}
{{- /* Replicas share the landing zone: slots split among the live pods (see bronze.landing_slots). */}}
- name: TRIBUTARY__BRONZE__LANDING_SLOTS
  value: {{ .svc.landingSlots | quote }}
- name: TRIBUTARY__BRONZE__MEMBER_ID
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
{{- end }}
{{- with .root.Values.kafka.saslPasswordSecret }}
{{- if .name }}
- name: TRIBUTARY_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .name }}, key: {{ .key }}}
{{- end }}
{{- end }}
{{- end -}}

{{/* Probes: kubelet's native gRPC health check, or /healthz when the gRPC port speaks TLS. */}}
{{- define "tributary.probes" -}}
{{- $v := .Values -}}
{{- range $probe := list "readinessProbe" "livenessProbe" }}
{{ $probe }}:
  {{- if $v.grpcTls.enabled }}
  httpGet: {path: /healthz, port: admin}
  {{- else }}
  grpc: {port: {{ $v.ports.grpc }}}
  {{- end }}
  periodSeconds: 10
  {{- if eq $probe "livenessProbe" }}
  initialDelaySeconds: 10
  failureThreshold: 6
  {{- else }}
  failureThreshold: 3
  {{- end }}
{{- end }}
{{- end -}}

{{/* The pod template of one service. */}}
{{- define "tributary.podTemplate" -}}
{{- $v := .root.Values -}}
metadata:
  labels:
    {{- include "tributary.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
  annotations:
    checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
spec:
  serviceAccountName: {{ include "tributary.serviceAccount" .root }}
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    fsGroup: 65532
    seccompProfile: {type: RuntimeDefault}
  terminationGracePeriodSeconds: 60
  {{- with (default $v.defaults.nodeSelector .svc.nodeSelector) }}
  nodeSelector: {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (default $v.defaults.tolerations .svc.tolerations) }}
  tolerations: {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (default $v.defaults.affinity .svc.affinity) }}
  affinity: {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .restartPolicy }}
  restartPolicy: {{ .restartPolicy }}
  {{- end }}
  containers:
    - name: {{ .name }}
      image: {{ include "tributary.image" .root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args:
        {{- include "tributary.args" . | nindent 8 }}
        {{- with .extraArgs }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      env:
        {{- include "tributary.env" . | nindent 8 }}
      ports:
        - {name: grpc, containerPort: {{ $v.ports.grpc }}, protocol: TCP}
        - {name: admin, containerPort: {{ $v.ports.admin }}, protocol: TCP}
        {{- if eq .key "kafka2prom" }}
        - {name: exposed, containerPort: {{ $v.ports.exposed }}, protocol: TCP}
        {{- end }}
      {{- if not .noProbes }}
      {{- include "tributary.probes" .root | nindent 6 }}
      {{- end }}
      resources:
        {{- toYaml (default $v.defaults.resources .svc.resources) | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: [ALL]}
      volumeMounts:
        - {name: config, mountPath: /etc/tributary, readOnly: true}
        - {name: data, mountPath: {{ $v.dataRoot }}}
        - {name: tmp, mountPath: /tmp}
        {{- if $v.grpcTls.enabled }}
        - {name: grpc-tls, mountPath: /etc/tributary-tls/grpc, readOnly: true}
        {{- end }}
        {{- if $v.kafka.tlsSecret }}
        - {name: kafka-tls, mountPath: /etc/tributary-tls/kafka, readOnly: true}
        {{- end }}
  volumes:
    - name: config
      configMap: {name: {{ include "tributary.fullname" .root }}-config}
    - name: data
      {{- if $v.storage.existingClaim }}
      persistentVolumeClaim: {claimName: {{ $v.storage.existingClaim }}}
      {{- else }}
      emptyDir: {}
      {{- end }}
    - name: tmp
      emptyDir: {}
    {{- if $v.grpcTls.enabled }}
    - name: grpc-tls
      secret: {secretName: {{ required "grpcTls.secretName is required when grpcTls.enabled" $v.grpcTls.secretName }}}
    {{- end }}
    {{- if $v.kafka.tlsSecret }}
    - name: kafka-tls
      secret: {secretName: {{ $v.kafka.tlsSecret }}}
    {{- end }}
{{- end -}}

{{- define "tributary.serviceAccount" -}}
{{- if .Values.serviceAccount.create }}{{ default (include "tributary.fullname" .) .Values.serviceAccount.name }}{{ else }}{{ default "default" .Values.serviceAccount.name }}{{ end -}}
{{- end -}}
