{{- define "spanrec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "spanrec.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "spanrec.selector" -}}
app.kubernetes.io/name: {{ include "spanrec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "spanrec.labels" -}}
{{ include "spanrec.selector" . }}
{{ include "spanrec.commonLabels" . }}
{{- end -}}

{{/* Labels of every object, apart from the selector ones. */}}
{{- define "spanrec.commonLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: spanrec
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "spanrec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "spanrec.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Secret with the S3 keys, and its key names (in-chart MinIO: its root user) */}}
{{- define "spanrec.s3Secret" -}}
{{- if .Values.s3.existingSecret -}}{{ .Values.s3.existingSecret }}
{{- else if or .Values.s3.accessKey .Values.s3.secretKey -}}{{ include "spanrec.fullname" . }}-s3
{{- else if .Values.minio.enabled -}}{{ .Values.minio.existingSecret | default (printf "%s-minio" .Release.Name | trunc 63 | trimSuffix "-") }}
{{- end -}}
{{- end -}}
{{- define "spanrec.s3AccessKeyKey" -}}
{{- if and .Values.minio.enabled (not .Values.s3.existingSecret) (not .Values.s3.accessKey) (not .Values.s3.secretKey) -}}rootUser{{- else -}}{{ .Values.s3.accessKeyKey }}{{- end -}}
{{- end -}}
{{- define "spanrec.s3SecretKeyKey" -}}
{{- if and .Values.minio.enabled (not .Values.s3.existingSecret) (not .Values.s3.accessKey) (not .Values.s3.secretKey) -}}rootPassword{{- else -}}{{ .Values.s3.secretKeyKey }}{{- end -}}
{{- end -}}
{{- define "spanrec.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}{{ printf "http://%s-minio:9000" .Release.Name }}{{- else -}}{{ .Values.s3.endpoint }}{{- end -}}
{{- end -}}

{{- define "spanrec.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}{{ printf "%s-etcd:2379" .Release.Name }}{{- else -}}{{ .Values.registry.endpoints }}{{- end -}}
{{- end -}}
{{/* Hosts of registry.endpoints that are not loopback (comma list; "" = all on
the pod itself): plain text is allowed to loopback only (registry/security.py). */}}
{{- define "spanrec.etcdRemoteHosts" -}}
{{- $remote := list -}}
{{- range $e := splitList "," (include "spanrec.etcdEndpoints" .) -}}
{{- $e = regexReplaceAll "^[A-Za-z][A-Za-z0-9+.-]*://" (trim $e) "" | trimSuffix "/" -}}
{{- if $e -}}
{{- $host := regexReplaceAll ":[0-9]*$" $e "" | trimPrefix "[" | trimSuffix "]" -}}
{{- if not (or (eq (lower $host) "localhost") (hasPrefix "127." $host) (eq $host "::1")) -}}
{{- $remote = append $remote $host -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- join "," $remote -}}
{{- end -}}

{{/* How the controller reaches etcd: "" (no registry), "tls" (SPANREC_ETCD_CA...),
"insecure" (plain text, SPANREC_ETCD_INSECURE: registry.insecure or the in-chart
etcd), "loopback" (plain text on the pod itself) or "refused" (plain text to a
remote etcd without the opt-in: the controller would exit 2). */}}
{{- define "spanrec.etcdMode" -}}
{{- if not (include "spanrec.etcdEndpoints" .) -}}
{{- else if .Values.etcd.enabled -}}insecure
{{- else if .Values.registry.tls.enabled -}}tls
{{- else if .Values.registry.insecure -}}insecure
{{- else if not (include "spanrec.etcdRemoteHosts" .) -}}loopback
{{- else -}}refused
{{- end -}}
{{- end -}}

{{- define "spanrec.etcdSecret" -}}
{{- if .Values.registry.auth.existingSecret -}}{{ .Values.registry.auth.existingSecret }}
{{- else if .Values.registry.auth.user -}}{{ include "spanrec.fullname" . }}-etcd-auth
{{- end -}}
{{- end -}}

{{- define "spanrec.probeMode" -}}
{{- if eq .Values.probes.mode "auto" -}}grpc{{- else -}}{{ .Values.probes.mode }}{{- end -}}
{{- end -}}

{{- define "spanrec.probe" -}}
{{- if eq (include "spanrec.probeMode" .root) "grpc" -}}
grpc:
  port: {{ include "spanrec.probePort" .root }}
  service: {{ .service | quote }}
{{- else -}}
tcpSocket:
  port: grpc
{{- end }}
{{- end -}}

{{/* gRPC health for the kubelet: with mTLS on, the controller also serves health
checking alone in plain text on probes.healthPort (--health-listen); without TLS
the main port answers it. */}}
{{- define "spanrec.probePort" -}}
{{- if .Values.tls.enabled -}}{{ .Values.probes.healthPort }}{{- else -}}{{ .Values.controller.port }}{{- end -}}
{{- end -}}

{{/* Shard processes per pod (controller.shards): shard i listens on port + i. */}}
{{- define "spanrec.shards" -}}
{{- max 1 (int .Values.controller.shards) -}}
{{- end -}}

{{/* The web player (web.enabled): its own component, so the controller's
Services and PodDisruptionBudget never select its pods (and the other way round). */}}
{{- define "spanrec.webName" -}}
{{- printf "%s-web" (include "spanrec.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "spanrec.webSelector" -}}
app.kubernetes.io/name: {{ include "spanrec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: web
{{- end -}}
{{- define "spanrec.webLabels" -}}
{{ include "spanrec.webSelector" . }}
{{ include "spanrec.commonLabels" . }}
{{- end -}}

{{/* Controller Admin API the web player lists active calls from: web.controller,
else the chart's own admin Service. */}}
{{- define "spanrec.webController" -}}
{{- .Values.web.controller | default (printf "%s-admin.%s.svc:%d" (include "spanrec.fullname" .) .Release.Namespace (int .Values.controller.port)) -}}
{{- end -}}
{{/* How the web player reaches that controller: "mtls" (web.clientCertSecret,
an operator certificate), "insecure" (the chart's controller in plain text,
tls.enabled=false) or "" (no --controller: mTLS without a client certificate). */}}
{{- define "spanrec.webControllerMode" -}}
{{- if .Values.web.clientCertSecret -}}mtls
{{- else if not .Values.tls.enabled -}}insecure
{{- end -}}
{{- end -}}
{{/* Port of the web Service: web.service.port, else 443 with web.tls, 8080 without. */}}
{{- define "spanrec.webServicePort" -}}
{{- if .Values.web.service.port -}}{{ .Values.web.service.port }}
{{- else if .Values.web.tls.secretName -}}443
{{- else -}}{{ .Values.web.port }}
{{- end -}}
{{- end -}}
