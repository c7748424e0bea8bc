{{/* Names, labels and shared pieces of every template. */}}

{{- define "training-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart>, or the release name alone when it already holds the chart's name. */}}
{{- define "training-agent.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "training-agent.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of one component's objects: <fullname>-<component>. */}}
{{- define "training-agent.component" -}}
{{- printf "%s-%s" (include "training-agent.fullname" .root) .component -}}
{{- end -}}

{{- define "training-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "training-agent.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "training-agent.labels" -}}
{{ include "training-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: training-agent
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* registry/repository:tag of one component's image (tag defaults to appVersion). */}}
{{- define "training-agent.image" -}}
{{- $image := index .root.Values .component "image" -}}
{{- $repository := $image.repository -}}
{{- if .root.Values.imageRegistry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" .root.Values.imageRegistry) $repository -}}
{{- end -}}
{{- printf "%s:%s" $repository (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{- define "training-agent.settingsConfigMap" -}}
{{- include "training-agent.component" (dict "root" . "component" "settings") -}}
{{- end -}}

{{/* Settings every container reads: the ConfigMap, then the Supabase key from its Secret. */}}
{{- define "training-agent.settingsEnv" -}}
envFrom:
  - configMapRef:
      name: {{ include "training-agent.settingsConfigMap" . }}
env:
  - name: SUPABASE_SERVICE_ROLE_KEY
    valueFrom:
      secretKeyRef:
        name: {{ .Values.secrets.supabase.existingSecret }}
        key: {{ .Values.secrets.supabase.key }}
{{- end -}}

{{/*
A setting as a ConfigMap string. YAML numbers reach templates as floats, which would print
large integers in exponent form (2.1e+10); whole numbers are printed as integers instead.
*/}}
{{- define "training-agent.settingValue" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) -}}
{{- int64 . | toString | quote -}}
{{- else -}}
{{- toString . | quote -}}
{{- end -}}
{{- end -}}

{{/* An emptyDir at /tmp: every root filesystem is read-only. */}}
{{- define "training-agent.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end -}}

{{/* nodeSelector, tolerations and affinity of a pod, those that are set (YAML, or nothing). */}}
{{- define "training-agent.placement" -}}
{{- $placement := dict -}}
{{- range $key := list "nodeSelector" "tolerations" "affinity" -}}
{{- with index $ $key }}{{ $_ := set $placement $key . }}{{ end -}}
{{- end -}}
{{- with $placement }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{/* A service account's annotations, with the Workload Identity one (YAML, or nothing). */}}
{{- define "training-agent.serviceAccountAnnotations" -}}
{{- $annotations := deepCopy (default dict .annotations) -}}
{{- with .gcpServiceAccount }}{{ $_ := set $annotations "iam.gke.io/gcp-service-account" . }}{{ end -}}
{{- with $annotations }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{/* Rules that span several values (the schema checks each value on its own). */}}
{{- define "training-agent.validate" -}}
{{- if and .Values.serviceMonitor.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) -}}
{{- fail "serviceMonitor.enabled needs the Prometheus Operator's ServiceMonitor CRD (monitoring.coreos.com/v1) in the cluster; install it or set serviceMonitor.enabled=false" -}}
{{- end -}}
{{- if and .Values.api.ingress.enabled (not .Values.api.ingress.host) -}}
{{- fail "api.ingress.host is required when api.ingress.enabled is true" -}}
{{- end -}}
{{- end -}}
