{{/* Names */}}
{{- define "sftlab.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sftlab.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "sftlab.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "sftlab.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "sftlab.mlflow.fullname" -}}{{ include "sftlab.fullname" . | trunc 56 | trimSuffix "-" }}-mlflow{{- end }}
{{- define "sftlab.postgresql.fullname" -}}{{ include "sftlab.fullname" . | trunc 52 | trimSuffix "-" }}-postgresql{{- end }}
{{- define "sftlab.minio.fullname" -}}{{ include "sftlab.fullname" . | trunc 57 | trimSuffix "-" }}-minio{{- end }}
{{- define "sftlab.predictor.fullname" -}}{{ include "sftlab.fullname" . | trunc 53 | trimSuffix "-" }}-predictor{{- end }}
{{- define "sftlab.pipeline.fullname" -}}{{ include "sftlab.fullname" . | trunc 54 | trimSuffix "-" }}-pipeline{{- end }}

{{/* Labels */}}
{{- define "sftlab.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "sftlab.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sftlab
{{- end }}

{{- define "sftlab.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sftlab.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Images: REGISTRY/NAME:TAG, one registry and tag for all sftlab images. */}}
{{- define "sftlab.tag" -}}{{ .Values.image.tag | default .Chart.AppVersion }}{{- end }}
{{- define "sftlab.image" -}}
{{- $root := index . 0 -}}{{- $name := index . 1 -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $root.Values.image.registry) $name (include "sftlab.tag" $root) }}
{{- end }}

{{/* Security contexts: non-root, no privilege escalation, no capabilities, read-only root FS. */}}
{{- define "sftlab.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "sftlab.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
{{- end }}

{{- define "sftlab.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* In-cluster MLflow URL. */}}
{{- define "sftlab.mlflow.url" -}}
http://{{ include "sftlab.mlflow.fullname" . }}.{{ .Release.Namespace }}.svc:{{ .Values.mlflow.port }}
{{- end }}

{{/* S3 endpoint the MLflow server (and pipelines) use: the bundled MinIO or the external one. */}}
{{- define "sftlab.s3.endpoint" -}}
{{- if .Values.artifacts.minio.enabled -}}
http://{{ include "sftlab.minio.fullname" . }}.{{ .Release.Namespace }}.svc:9000
{{- else -}}
{{ .Values.artifacts.s3.endpointUrl }}
{{- end }}
{{- end }}

{{/* Secret names holding the generated or existing credentials. */}}
{{- define "sftlab.postgresql.secret" -}}
{{- .Values.postgresql.existingSecret | default (include "sftlab.postgresql.fullname" .) }}
{{- end }}
{{- define "sftlab.minio.secret" -}}
{{- .Values.artifacts.minio.existingSecret | default (include "sftlab.minio.fullname" .) }}
{{- end }}

{{/*
Environment of the MLflow server and of the migration Job: backend store, artifact destination,
S3 credentials (server side only). Values are literal settings; credentials are secretKeyRefs.
*/}}
{{- define "sftlab.mlflow.env" -}}
{{ include "sftlab.mlflow.backend.env" . }}
{{ include "sftlab.mlflow.artifacts.env" . }}
{{- end }}

{{/* The backend store alone: all the migration hook needs. A pre-install hook runs before the
     chart's ordinary resources exist, the bundled MinIO's Secret included, so it must not
     reference them. */}}
{{- define "sftlab.mlflow.backend.env" -}}
{{- if .Values.postgresql.enabled }}
- name: MLFLOW_DB_HOST
  value: {{ include "sftlab.postgresql.fullname" . }}
- name: MLFLOW_DB_PORT
  value: "5432"
- name: MLFLOW_DB_NAME
  value: {{ .Values.postgresql.database | quote }}
- name: MLFLOW_DB_USER
  value: {{ .Values.postgresql.username | quote }}
- name: MLFLOW_DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "sftlab.postgresql.secret" . }}
      key: {{ .Values.postgresql.passwordKey }}
{{- else }}
- name: MLFLOW_BACKEND_STORE_URI
  valueFrom:
    secretKeyRef:
      name: {{ required "externalDatabase.existingSecret is required when postgresql.enabled is false" .Values.externalDatabase.existingSecret }}
      key: {{ .Values.externalDatabase.dsnKey }}
{{- end }}
{{- end }}

{{- define "sftlab.mlflow.artifacts.env" -}}
- name: MLFLOW_ARTIFACTS_DESTINATION
  value: {{ printf "s3://%s/%s" .Values.artifacts.bucket (trimAll "/" .Values.artifacts.prefix) | trimSuffix "/" | quote }}
{{- with (include "sftlab.s3.endpoint" .) }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.artifacts.s3.region | quote }}
{{- if .Values.artifacts.minio.enabled }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "sftlab.minio.secret" . }}
      key: root-user
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "sftlab.minio.secret" . }}
      key: root-password
{{- else if .Values.artifacts.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.artifacts.s3.existingSecret }}
      key: {{ .Values.artifacts.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.artifacts.s3.existingSecret }}
      key: {{ .Values.artifacts.s3.secretAccessKeyKey }}
{{- end }}
{{- end }}

{{/* Multipart upload settings, shared by the server and the pipeline pods (ConfigMap). */}}
{{- define "sftlab.multipart.env" -}}
MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD: {{ .Values.mlflow.multipartUpload.enabled | toString | quote }}
MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE: {{ .Values.mlflow.multipartUpload.chunkSizeBytes | int64 | toString | quote }}
MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE: {{ .Values.mlflow.multipartUpload.minimumFileSizeBytes | int64 | toString | quote }}
{{- end }}
