{{/*
The pod spec shared by the Deployment, the StatefulSet and the DaemonSet.
Call with (dict "root" $ "workload" "deployment"|"statefulset"|"daemonset" "values" .Values.<workload>
"automount" bool "configMap" name), plus "shards" N for the StatefulSet.
*/}}
{{- define "certscope.podSpec" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $web := $root.Values.web -}}
{{- $webConfig := include "certscope.webConfigEnabled" $root -}}
{{- $mtls := and $web.tls.enabled (eq $web.tls.clientAuthType "RequireAndVerifyClientCert") -}}
serviceAccountName: {{ include "certscope.serviceAccountName" $root }}
automountServiceAccountToken: {{ .automount }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- $psc := deepCopy $root.Values.podSecurityContext }}
  {{- if and (eq .workload "daemonset") $v.supplementalGroups }}
  {{- $_ := set $psc "supplementalGroups" $v.supplementalGroups }}
  {{- end }}
  {{- toYaml $psc | nindent 2 }}
containers:
  - name: certscope
    image: {{ include "certscope.image" $root }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      - run
      - --config.file=/etc/certscope/config.yaml
      - --web.listen-address=:{{ $web.port }}
      {{- if $webConfig }}
      - --web.config.file=/etc/certscope/web/web-config.yml
      {{- end }}
      - --log.level={{ $root.Values.logLevel }}
      - --log.format={{ $root.Values.logFormat }}
      {{- if .shards }}
      # Each pod takes the ordinal ending its name (<name>-0 .. <name>-N-1) as its shard.
      - --shard.index=hostname
      - --shard.count={{ .shards }}
      {{- end }}
      {{- range $root.Values.extraArgs }}
      - {{ . | quote }}
      {{- end }}
    {{- with $root.Values.extraEnv }}
    env:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    ports:
      - name: http-metrics
        containerPort: {{ $web.port }}
        protocol: TCP
    {{- range $probe := list "livenessProbe" "readinessProbe" }}
    {{ $probe }}:
      {{- if $mtls }}
      # The kubelet has no client certificate: a TCP check.
      tcpSocket:
        port: http-metrics
      {{- else }}
      httpGet:
        path: {{ if eq $probe "livenessProbe" }}/-/healthy{{ else }}/-/ready{{ end }}
        port: http-metrics
        scheme: {{ if $web.tls.enabled }}HTTPS{{ else }}HTTP{{ end }}
      {{- end }}
      {{- toYaml (get $root.Values $probe) | nindent 6 }}
    {{- end }}
    resources:
      {{- toYaml $v.resources | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    volumeMounts:
      - name: config
        mountPath: /etc/certscope/config.yaml
        subPath: config.yaml
        readOnly: true
      - name: tmp
        mountPath: /tmp
      {{- if $webConfig }}
      - name: web-config
        mountPath: /etc/certscope/web/web-config.yml
        subPath: web-config.yml
        readOnly: true
      {{- end }}
      {{- if and $web.tls.enabled $web.tls.secretName }}
      # A directory mount, not subPath: the kubelet swaps the files on renewal and
      # certscope serves the new certificate on the next connection.
      - name: web-tls
        mountPath: /etc/certscope/web/tls
        readOnly: true
      {{- end }}
      {{- if and $web.tls.enabled $web.tls.clientCASecretName }}
      - name: web-client-ca
        mountPath: /etc/certscope/web/client-ca
        readOnly: true
      {{- end }}
      {{- if eq .workload "daemonset" }}
      {{- range (include "certscope.hostPaths" $root | fromJson).paths }}
      - name: host-{{ .name }}
        mountPath: {{ .path }}
        readOnly: true
      {{- end }}
      {{- end }}
      {{- with $root.Values.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: config
    configMap:
      name: {{ .configMap }}
  - name: tmp
    emptyDir:
      sizeLimit: 16Mi
  {{- if $webConfig }}
  - name: web-config
    secret:
      secretName: {{ include "certscope.webConfigSecretName" $root }}
  {{- end }}
  {{- if and $web.tls.enabled $web.tls.secretName }}
  - name: web-tls
    secret:
      secretName: {{ $web.tls.secretName }}
      defaultMode: 0440
  {{- end }}
  {{- if and $web.tls.enabled $web.tls.clientCASecretName }}
  - name: web-client-ca
    secret:
      secretName: {{ $web.tls.clientCASecretName }}
      items: [{key: ca.crt, path: ca.crt}]
  {{- end }}
  {{- if eq .workload "daemonset" }}
  {{- range (include "certscope.hostPaths" $root | fromJson).paths }}
  - name: host-{{ .name }}
    hostPath:
      path: {{ .path }}
      type: Directory
  {{- end }}
  {{- end }}
  {{- with $root.Values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
