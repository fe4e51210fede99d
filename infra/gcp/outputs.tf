output "cluster_name" {
  value = google_container_cluster.biofleet.name
}

output "bucket" {
  value = google_storage_bucket.blobs.name
}

output "workload_service_account" {
  description = "Annotate the Kubernetes ServiceAccount with iam.gke.io/gcp-service-account=<this>."
  value       = google_service_account.workload.email
}
