{{/* Names */}}
{{- define "certscope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "certscope.fullname" -}}
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

{{- define "certscope.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "certscope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "certscope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "certscope.labels" -}}
helm.sh/chart: {{ include "certscope.chart" . }}
{{ include "certscope.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: certscope
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "certscope.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "certscope.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "certscope.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
RBAC scopes the kubernetes probes of .Values.config need, and the tls probes that discover
their endpoints in the cluster (a `kubernetes:` block, and `discovery`), as JSON:
{"cluster": ["secrets", ...] (core resources in every namespace), "clusterGroups": {"api group": ["resource", ...]}
(the cluster-scoped objects of ca_bundles and certificate_signing_requests, and ingresses and gateways in every
namespace), "namespaces": {"ns": {"api group": ["resource", ...]}}, "inCluster": bool}; a ClusterRole is made when
cluster or clusterGroups is not empty.  Probes with a kubeconfig talk to another cluster and need nothing here.
*/}}
{{- define "certscope.rbacScopes" -}}
{{- $cluster := list -}}
{{- $groups := dict -}}
{{- $namespaces := dict -}}
{{- $inCluster := false -}}
{{- $groupOf := dict "validatingwebhookconfigurations" "admissionregistration.k8s.io" "mutatingwebhookconfigurations" "admissionregistration.k8s.io" "apiservices" "apiregistration.k8s.io" "customresourcedefinitions" "apiextensions.k8s.io" -}}
{{- $probes := .Values.config.probes -}}
{{- if .Values.discovery.enabled -}}{{- $probes = append $probes (include "certscope.discoveryProbe" . | fromJson) -}}{{- end -}}
{{- range $probes -}}
{{- /* (api group, resource) pairs this probe reads in its namespaces */ -}}
{{- $reads := list -}}
{{- $namespaced := list -}}
{{- if and (eq (toString .kind) "kubernetes") (not .kubeconfig) -}}
{{- $inCluster = true -}}
{{- if or (not (hasKey . "secrets")) .secrets -}}{{- $reads = append $reads (list "" "secrets") -}}{{- end -}}
{{- if .configmaps -}}{{- $reads = append $reads (list "" "configmaps") -}}{{- end -}}
{{- $namespaced = .namespaces -}}
{{- $probe := .name -}}
{{- range .ca_bundles -}}
{{- if not (hasKey $groupOf .) -}}
{{- fail (printf "config.probes %s: ca_bundles: unknown resource %q (%s)" $probe . (keys $groupOf | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $group := get $groupOf . -}}
{{- $_ := set $groups $group (append (get $groups $group | default list) . | uniq | sortAlpha) -}}
{{- end -}}
{{- if .certificate_signing_requests -}}
{{- $_ := set $groups "certificates.k8s.io" (list "certificatesigningrequests") -}}
{{- end -}}
{{- else if and (eq (toString .kind) "tls") .kubernetes -}}
{{- $discover := .kubernetes -}}
{{- if not $discover.kubeconfig -}}
{{- $inCluster = true -}}
{{- if $discover.ingresses -}}{{- $reads = append $reads (list "networking.k8s.io" "ingresses") -}}{{- end -}}
{{- if $discover.gateways -}}{{- $reads = append $reads (list "gateway.networking.k8s.io" "gateways") -}}{{- end -}}
{{- if $discover.services -}}{{- $reads = append $reads (list "" "services") -}}{{- end -}}
{{- if or (not (hasKey $discover "secrets")) $discover.secrets -}}{{- $reads = append $reads (list "" "secrets") -}}{{- end -}}
{{- $namespaced = $discover.namespaces -}}
{{- end -}}
{{- end -}}
{{- range $reads -}}
{{- $group := index . 0 -}}
{{- $resource := index . 1 -}}
{{- if $namespaced -}}
{{- range $namespaced -}}
{{- $rules := get $namespaces . | default dict -}}
{{- $_ := set $rules $group (append (get $rules $group | default list) $resource | uniq | sortAlpha) -}}
{{- $_ := set $namespaces . $rules -}}
{{- end -}}
{{- else if eq $group "" -}}
{{- $cluster = append $cluster $resource | uniq | sortAlpha -}}
{{- else -}}
{{- $_ := set $groups $group (append (get $groups $group | default list) $resource | uniq | sortAlpha) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- dict "cluster" $cluster "clusterGroups" $groups "namespaces" $namespaces "inCluster" $inCluster | toJson -}}
{{- end -}}

{{/* The tls probe of `discovery` (endpoints discovered in the cluster), as JSON. */}}
{{- define "certscope.discoveryProbe" -}}
{{- $d := .Values.discovery -}}
{{- $kubernetes := dict "kubeconfig" nil "namespaces" $d.namespaces "label_selector" $d.labelSelector "secrets" $d.secrets "max_targets" $d.maxTargets -}}
{{- with $d.ingresses }}{{- $_ := set $kubernetes "ingresses" . -}}{{- end -}}
{{- with $d.gateways }}{{- $_ := set $kubernetes "gateways" . -}}{{- end -}}
{{- with $d.services }}{{- $_ := set $kubernetes "services" . -}}{{- end -}}
{{- $probe := dict "name" $d.name "kind" "tls" "interval" $d.interval "kubernetes" $kubernetes -}}
{{- with $d.labels }}{{- $_ := set $probe "labels" . -}}{{- end -}}
{{- with $d.trust }}{{- $_ := set $probe "trust" . -}}{{- end -}}
{{- with $d.http }}{{- $_ := set $probe "http" . -}}{{- end -}}
{{- $probe | toJson -}}
{{- end -}}

{{/* Whether a workload runs `config` (the Deployment, or the StatefulSet that shards it):
the ConfigMap, Service, RBAC and ServiceMonitor follow it. */}}
{{- define "certscope.exporterEnabled" -}}
{{- if or .Values.deployment.enabled .Values.statefulset.enabled -}}true{{- end -}}
{{- end -}}

{{/* The StatefulSet's headless Service, its spec.serviceName. */}}
{{- define "certscope.headlessServiceName" -}}
{{- printf "%s-headless" (include "certscope.fullname" .) -}}
{{- end -}}

{{/*
Sharding is the StatefulSet's alone: its pods end in an ordinal that `--shard.index=hostname`
reads.  A Deployment's pod names end in a random suffix, and each DaemonSet pod reads its own
node's files, already a partition; so the chart owns the --shard.* flags.
*/}}
{{- define "certscope.validateSharding" -}}
{{- range .Values.extraArgs -}}
{{- if hasPrefix "--shard." (toString .) -}}
{{- fail (printf "extraArgs: %s: the chart sets the --shard.* flags itself; use statefulset.enabled and statefulset.shards (a Deployment's pods have no ordinal, and the DaemonSet is not sharded: each pod reads its own node)" .) -}}
{{- end -}}
{{- end -}}
{{- $sts := .Values.statefulset -}}
{{- if $sts.enabled -}}
{{- if .Values.deployment.enabled -}}
{{- fail "statefulset.enabled runs `config` sharded in place of the Deployment: set deployment.enabled=false (with both, every target would be probed twice)" -}}
{{- end -}}
{{- if lt (int $sts.shards) 1 -}}
{{- fail (printf "statefulset.shards must be at least 1 (the number of replicas that split `config`), got %v" $sts.shards) -}}
{{- end -}}
{{- $name := include "certscope.fullname" . -}}
{{- if gt (len $name) 52 -}}
{{- /* The controller labels each pod controller-revision-hash=<name>-<10-char hash>, at most 63 characters. */ -}}
{{- fail (printf "statefulset: the name %q is %d characters; a StatefulSet's pods need at most 52 (set fullnameOverride)" $name (len $name)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Whether a web config file is passed to certscope. */}}
{{- define "certscope.webConfigEnabled" -}}
{{- if or .Values.web.existingConfigSecret .Values.web.tls.enabled .Values.web.basicAuthUsers .Values.web.headers -}}true{{- end -}}
{{- end -}}

{{- define "certscope.webConfigSecretName" -}}
{{- default (printf "%s-web-config" (include "certscope.fullname" .)) .Values.web.existingConfigSecret -}}
{{- end -}}

{{- define "certscope.scheme" -}}
{{- if .scheme -}}{{ .scheme }}{{- else if .root.Values.web.tls.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* The DaemonSet's config: its own global and probes, plus one files probe per preset and host path. */}}
{{- define "certscope.daemonsetConfig" -}}
{{- $probes := list -}}
{{- range .Values.daemonset.config.probes -}}{{- $probes = append $probes . -}}{{- end -}}
{{- range (include "certscope.hostPaths" . | fromJson).paths -}}
{{- $globs := list -}}
{{- $root := .path -}}
{{- range .globs -}}{{- $globs = append $globs (printf "%s/%s" $root .) -}}{{- end -}}
{{- $probes = append $probes (dict "name" (printf "node-%s" .name) "kind" "files" "paths" $globs "ignore_missing" true "exclude" (list "**/expired/**")) -}}
{{- end -}}
{{- $config := deepCopy .Values.daemonset.config -}}
{{- $_ := set $config "probes" $probes -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Host directories of the presets and daemonset.hostPaths: {"paths": [{name, path, globs}]} */}}
{{- define "certscope.hostPaths" -}}
{{- $paths := list -}}
{{- range .Values.daemonset.presets -}}
{{- if eq . "kubeadm" -}}
{{- $paths = append $paths (dict "name" "kubeadm-pki" "path" "/etc/kubernetes/pki" "globs" (list "**/*.crt")) -}}
{{- $paths = append $paths (dict "name" "kubelet-pki" "path" "/var/lib/kubelet/pki" "globs" (list "*.crt")) -}}
{{- /* admin.conf, kubelet.conf, ...: client certificates that expire after a year (kubelet.conf points into kubelet-pki) */ -}}
{{- $paths = append $paths (dict "name" "kubeadm-kubeconfigs" "path" "/etc/kubernetes" "globs" (list "*.conf")) -}}
{{- else if eq . "k3s" -}}
{{- $paths = append $paths (dict "name" "k3s-server-tls" "path" "/var/lib/rancher/k3s/server/tls" "globs" (list "**/*.crt")) -}}
{{- /* the agent's kubelet, kube-proxy and controller kubeconfigs point at its *.crt files */ -}}
{{- $paths = append $paths (dict "name" "k3s-agent" "path" "/var/lib/rancher/k3s/agent" "globs" (list "*.crt" "*.kubeconfig")) -}}
{{- /* the server's component kubeconfigs point into server/tls; k3s.yaml embeds the admin's certificate */ -}}
{{- $paths = append $paths (dict "name" "k3s-server-cred" "path" "/var/lib/rancher/k3s/server/cred" "globs" (list "*.kubeconfig")) -}}
{{- $paths = append $paths (dict "name" "k3s-kubeconfig" "path" "/etc/rancher/k3s" "globs" (list "k3s.yaml")) -}}
{{- else -}}
{{- fail (printf "daemonset.presets: unknown preset %q (kubeadm, k3s)" .) -}}
{{- end -}}
{{- end -}}
{{- range .Values.daemonset.hostPaths -}}
{{- $paths = append $paths (dict "name" .name "path" .path "globs" (.globs | default (list "**/*.crt" "**/*.pem"))) -}}
{{- end -}}
{{- dict "paths" $paths | toJson -}}
{{- end -}}
