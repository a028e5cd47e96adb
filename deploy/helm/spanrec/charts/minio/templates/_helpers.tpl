{{- define "minio.fullname" -}}{{ printf "%s-minio" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "minio.secretName" -}}{{ .Values.existingSecret | default (include "minio.fullname" .) }}{{- end -}}
{{- define "minio.labels" -}}
app.kubernetes.io/name: minio
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: spanrec
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "minio.selector" -}}
app.kubernetes.io/name: minio
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
