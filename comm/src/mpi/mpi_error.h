// MPI error code -> its text (MPI_Error_string), shared by the MPI bootstrap and transport.
#pragma once

#include <mpi.h>

#include <string>

namespace locmoe {

inline std::string mpi_error_text(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  return std::string(text, len);
}

}  // namespace locmoe
