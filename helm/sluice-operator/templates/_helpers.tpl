{{/* Names and labels shared by every template. */}}

{{- define "sluice-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice-operator.fullname" -}}
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

{{- define "sluice-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sluice-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sluice-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: sluice
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "sluice-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sluice-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sluice-operator.image" -}}
{{- $image := .Values.operator.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "sluice-operator.runtimeImage" -}}
{{- $image := .Values.runtime.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The runtime pods' default ServiceAccount, "" when the chart names none. */}}
{{- define "sluice-operator.runtimeServiceAccountName" -}}
{{- $sa := .Values.runtime.serviceAccount -}}
{{- if $sa.create -}}
{{- default "sluice-runtime" $sa.name -}}
{{- else -}}
{{- $sa.name -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the runtime ServiceAccount is created in (and named by default in):
watchNamespaces, else runtime.serviceAccount.namespaces, else the release namespace. */}}
{{- define "sluice-operator.runtimeServiceAccountNamespaces" -}}
{{- .Values.watchNamespaces | default .Values.runtime.serviceAccount.namespaces | default (list .Release.Namespace) | join "," -}}
{{- end -}}

{{/* Leader election is on with more than one replica. */}}
{{- define "sluice-operator.leaderElection" -}}
{{- if gt (int .Values.operator.replicaCount) 1 -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* Labels the runtime pods of every pipeline carry (the operator's contract). */}}
{{- define "sluice-operator.runtimeSelector" -}}
app.kubernetes.io/name: sluice-runtime
{{- end -}}

{{/* The restricted Pod Security Standard, for the operator's and the test's containers. */}}
{{- define "sluice-operator.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "sluice-operator.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
