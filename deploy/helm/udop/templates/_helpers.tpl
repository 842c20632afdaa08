{{- define "udop.labels" -}}
app.kubernetes.io/name: udop
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "udop.env" -}}
- name: UDOP_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.secretName }}, key: DATABASE_URL}
{{- range $name, $value := .Values.settings }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{- define "udop.volumes" -}}
{{- if .Values.data.claimName }}
- name: data
  persistentVolumeClaim: {claimName: {{ .Values.data.claimName }}}
{{- end }}
- name: pipelines
  configMap: {name: {{ .Values.pipelines.configMap }}}
{{- end -}}

{{- define "udop.mounts" -}}
{{- if .Values.data.claimName }}
- {name: data, mountPath: /data}
{{- end }}
- {name: pipelines, mountPath: /pipelines, readOnly: true}
{{- end -}}
