// Package kubernetes is the discovery source that finds workers among the pods of one
// namespace matching a label selector (configs.KubernetesDiscovery), through a
// client-go shared informer: one list, then a watch, with client-go's reflector
// re-listing and re-watching as needed and a full resync every resync period.
//
// # Members
//
// Every pod the informer holds that matches the selector is looked at, in name order:
//
//   - A pod in phase Succeeded or Failed is no worker (absent: drained, then removed).
//   - A pod without status.podIP yet is skipped silently: it is being scheduled or
//     started, and appears once it has one.
//   - Otherwise it is a member with id = the pod's name (one namespace is watched, so
//     names are unique), host = its IP (status.podIP, the primary address of a
//     dual-stack pod), port = discovery.kubernetes.port or the
//     container port named port_name (the first container having it), and the
//     template's scheme, models, dp_ranks, api_key_env, max_conns, bootstrap_port and
//     event/replay ports on the same IP; its role (prefill/decode disaggregation) is the
//     pod's label kvroute.io/role when set, else the template's (an invalid one leaves
//     the pod out as an invalid worker).
//   - Ready is the pod's Ready condition being True and the pod not terminating: a pod
//     with a deletionTimestamp is drained at once, before its containers get SIGTERM's
//     grace period, so no new request is sent to an engine about to stop.
//
// # Invariants
//
//   - update gets the full view, sorted by worker id, the first time once the
//     informer's cache has synced (the first full list; an empty namespace is an
//     empty first view) and then only when it differs from the last view reported.
//     Events are coalesced for 20ms, so a rollout is a few reports, not one per pod
//     event, and a change reaches update within about 20ms of its event.
//   - Nothing is reported before the first list succeeds: a partial cache would drain
//     the rest of the fleet. Run logs a warning every 10s while the API does not answer
//     and keeps waiting (client-go retries with backoff) until ctx ends.
//   - A list or watch error never changes the view: client-go keeps its cache and
//     retries, so update is not called until events arrive again. The error is
//     counted (result="error") and logged at warning level once per streak, at debug
//     after; the next event from the API ends the streak (logged at info). A real
//     deletion while the API was away shows as a removal after the re-list.
//   - A pod that names no usable worker is skipped, never fatal, and counted once
//     while it stays so: a pod IP that is not an address or one no worker can have
//     (unspecified, 0.0.0.0/8, multicast, broadcast, IPv6 link-local, the same rules
//     as the dns source) is bad_address; a pod without the named port is bad_port; a
//     worker failing configs.ValidateWorker is invalid_worker. It is logged at warning
//     level when it becomes bad, not at every event.
//   - The selector is applied by the API server to every list and watch and again by
//     the source to its cache, so a pod relabelled out of it leaves the view however
//     the watch reports it.
//
// # InferencePool
//
// With discovery.kubernetes.inference_pool set (instead of label_selector and port),
// the pods are those of an InferencePool of the namespace (inference.networking.k8s.io/v1,
// the Gateway API Inference Extension's name for a model server fleet): its
// spec.selector.matchLabels selects them and its first spec.targetPorts number is their
// HTTP port. The fields read are those of api/v1/inferencepool_types.go in
// kubernetes-sigs/gateway-api-inference-extension (https://github.com/kubernetes-sigs/gateway-api-inference-extension/blob/main/api/v1/inferencepool_types.go).
//
// The pool is read with client-go's dynamic client and a dynamic informer on
// unstructured objects (limited to the pool's name by a field selector), converted by
// runtime.DefaultUnstructuredConverter into a small struct of this package holding
// only those fields. The project's own typed clientset
// (sigs.k8s.io/gateway-api-inference-extension) is not used: it requires other
// k8s.io and controller-runtime versions than the client-go this module builds with,
// and two fields do not justify pinning the whole Kubernetes dependency set to it.
//
//   - Nothing is reported until the pool exists and is usable; then a pod watch (the
//     label-selector source above, with the pool's selector and port) runs, and its
//     views are the source's.
//   - A change of the pool's selector or port stops that pod watch (waiting for it to
//     return) and starts one with the new ones; the last view stays until the new
//     watch's first full list replaces it, so no partial view is ever reported.
//   - A deleted pool keeps the pod watch of its last spec running (a re-created pool
//     takes over again): logged at warning level and counted as
//     kvroute_discovery_lookups_total{result="error"} once per deletion.
//   - A malformed pool (no or empty matchLabels, invalid labels, no targetPorts, a
//     port outside 1..65535 or of the wrong type) is never applied: logged with the
//     decoding error and counted as kvroute_discovery_rejected_total{reason="bad_pool"}
//     once per distinct problem; the last view stays (before any usable pool,
//     nothing is reported).
//
// # Concurrency
//
// [New] does no I/O beyond reading a kubeconfig and the service account's namespace
// file. [Source.Run] runs the informer's goroutines under its context and reports from
// its own goroutine, never concurrently; it returns once they have all stopped. The
// informer's event handlers only wake that goroutine. Run may be called once.
//
// # RBAC
//
// The router's service account needs, in the watched namespace only, a Role with
//
//	rules:
//	- apiGroups: [""]
//	  resources: ["pods"]
//	  verbs: ["get", "list", "watch"]
//
// and a RoleBinding to it; deploy/kubernetes has both. With inference_pool, the Role
// also needs
//
//   - apiGroups: ["inference.networking.k8s.io"]
//     resources: ["inferencepools"]
//     verbs: ["get", "list", "watch"]
//
// as deploy/kubernetes/epp has. Nothing is written to the API.
//
// # Metrics
//
// Through [discovery.Metrics], with source="kubernetes":
// kvroute_discovery_lookups_total{result="ok|error"} (ok: the first sync and every
// informer event; error: every failed list or watch), kvroute_discovery_members (the
// members in the last view reported) and
// kvroute_discovery_rejected_total{reason="bad_address|invalid_worker|bad_port|bad_pool"}.
//
// # Decoding
//
// client-go decodes the API's answers into typed pods, and what the package checks
// (the pod IP, ports, the worker) is table-tested. The InferencePool is decoded here
// from unstructured content ([ParseInferencePool]): table-tested, and fuzzed by
// FuzzParsePool (arbitrary JSON objects: an error or a usable spec, never a panic).
package kubernetes
